"""Markdown tables of docs/robustness.md from the JSON lines of bench_robustness.py and bench_freshness.py.

    python bench/robustness_tables.py docs/robustness-latest.jsonl [docs/freshness-latest.jsonl]
"""
from __future__ import annotations

import json
import sys


def attack_tables(records: list[dict]) -> str:
    out = []
    for data in sorted({r["data"] for r in records}):
        for model in ("EGES+PQ+graph", "bought-together counts"):
            rows = [r for r in records if r["data"] == data and r["model"] == model]
            if not rows:
                continue
            clean = {r["defence"]: r for r in rows if r["attack"] == "clean"}
            out += [f"**{data}, {model}**", "",
                    "| attack | fake accounts (lines) | defences | popular lists with the target | its mean rank there "
                    "| fake accounts excluded | warm R@20 | vs clean, same defences | cold R@20 | warm cov@20 |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                # on clean data the screen excludes nothing (measured), so "exclusion" is the undefended model there
                same = clean.get(r["defence"]) or (clean.get("none") if r["defence"] == "exclusion" else None)
                base = (same or {}).get("warm_recall@20")
                change = "" if not base or r["attack"] == "clean" else f"{r['warm_recall@20'] / base - 1:+.1%}"
                screen = r.get("screen") or {}
                caught = screen.get("fake_accounts_excluded")
                excluded = "-" if not screen else (f"{caught} of {r['fake_accounts']}" if caught is not None
                                                   else f"{screen.get('excluded_accounts', 0)} real")
                attack = "clean" if r["attack"] == "clean" else f"{r['attack']} {r['share']:.1%}"
                rank = r.get("mean_rank_when_listed")
                out.append(f"| {attack} | {r['fake_accounts']} ({r['fake_lines']}) | {r['defence']} | "
                           f"{r['share_with_target']:.0%} | {'-' if rank is None else f'{rank:.1f}'} | {excluded} | "
                           f"{r['warm_recall@20']:.4f} | {change} | {r['cold_recall@20']:.4f} | "
                           f"{r['warm_coverage@20']:.3f} |")
            out.append("")
    return "\n".join(out)


def freshness_table(records: list[dict]) -> str:
    days = [r for r in records if not r.get("summary")]
    out = ["| day | queries (fresh) | R@20 version / refreshed / lists only | fresh R@20 version / refreshed / "
           "lists only | items folded in | refresh s |", "|---|---|---|---|---|---|"]

    def three(r, prefix):
        return " / ".join("-" if r.get(f"{prefix}{n}") is None else f"{r[f'{prefix}{n}']:.4f}"
                          for n in ("version", "refreshed", "lists_only"))

    for r in days:
        out.append(f"| {r['day']} | {r['queries']} ({r['fresh_queries']}) | {three(r, 'recall@20_')} | "
                   f"{three(r, 'fresh_recall@20_')} | {r['folded_items']} | {r['refresh_s']:.1f} |")
    for s in (r for r in records if r.get("summary")):
        out.append(f"| all | {s['queries_all_version']} ({s['queries_fresh_version']}) | {three(s, 'recall@20_all_')} | "
                   f"{three(s, 'recall@20_fresh_')} | | median {s['refresh_s_median']:.1f}, "
                   f"max {s['refresh_s_max']:.1f} |")
    return "\n".join(out)


def main() -> None:
    for path in sys.argv[1:]:
        records = [json.loads(line) for line in open(path) if line.strip()]
        if records and records[0].get("bench") == "freshness":
            print(freshness_table(records))
        else:
            print(attack_tables(records))
        print()


if __name__ == "__main__":
    main()
