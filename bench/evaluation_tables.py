"""The result sections and the goal table of docs/evaluation.md from bench/evaluate_datasets.py's JSON lines.

    python bench/evaluation_tables.py docs/evaluation-latest.jsonl
"""
from __future__ import annotations

import json
import sys

TITLES = {"tafeng": "Ta-Feng (adapter)", "online-retail": "Online Retail (adapter)",
          "online-retail-generic": "Online Retail (generic import)", "synthetic-a": "Synthetic A",
          "synthetic-b": "Synthetic B"}
SHIPPED = "EGES+PQ+graph"


def _weights(blend: dict) -> str:
    return ", ".join(f"{name} {w:.3f}" for name, w in blend["weights"].items() if w != 0.0)


def blend_line(line: dict) -> str:
    c = line.get("blend_choice")
    if not c:
        return ""
    share = c["half_life_share"]
    half = "none" if share is None else f"{share:g} of the span"
    cold_choice = ""
    for tried in c.get("cold_candidates", []):  # the cold candidates of the chosen half-life
        if tried["half_life_share"] == share:
            cold_choice = (f" (cold: {tried['chosen']}; validation Recall@20 of each cold candidate, gain over the "
                           f"embedding alone ± its standard error: " + ", ".join(
                               f"{name} {r['cold_recall@20']:.4f}"
                               + ("" if name == "embedding alone" else
                                  f" ({r['gain_over_embedding']:+.4f} ± {r['standard_error']:.4f})")
                               for name, r in tried["candidates"].items()) + ")")
    return (f"Shipped blend, chosen on {c['n_warm_queries']:,} warm / {c['n_cold_queries']:,} cold validation "
            f"queries ({c['cold_fitted_on']}): half-life {half}, embedding scale {c['embedding_scale']:g}, "
            f"popularity cut {c['popularity_cut']:g}, interleaving "
            f"{'every ' + str(c['interleave']) + ' places' if c.get('interleave') else 'none'}; warm weights {_weights(c['warm'])}; cold weights "
            f"{_weights(c['cold'])}{cold_choice}. Bought-together counts' validation coverage@20: "
            f"{c['bought_together_coverage@20']:.3f}. Wall time {line['seconds']:.0f} s.")


def goal_row(line: dict) -> str:
    rows = {r["name"]: r for r in line["report"]["rows"]}
    shipped = rows[SHIPPED]

    def r20(row, segment, metric="recall"):
        return row[segment][metric]["20"]

    others = {n: r for n, r in rows.items() if n not in (SHIPPED, "EGES+PQ")}
    best_w = max(others, key=lambda n: r20(others[n], "warm"))
    best_c = max(others, key=lambda n: r20(others[n], "cold"))
    bt = rows["bought-together counts"]
    cold = r20(shipped, "cold")
    return (f"| {TITLES.get(line['data'], line['data'])} | {r20(shipped, 'warm'):.4f} / {r20(others[best_w], 'warm'):.4f} "
            f"{best_w} ({r20(shipped, 'warm') / r20(others[best_w], 'warm'):.3f}) | {cold:.4f} / "
            f"{r20(others[best_c], 'cold'):.4f} {best_c} ({cold / r20(others[best_c], 'cold'):.3f}) | "
            f"{cold / r20(rows['popularity'], 'cold'):.3f}, {cold / r20(bt, 'cold'):.3f} | "
            f"{r20(shipped, 'warm', 'coverage'):.3f} / {r20(bt, 'warm', 'coverage'):.3f} | "
            f"{r20(shipped, 'warm', 'tail_recall'):.4f} / {r20(bt, 'warm', 'tail_recall'):.4f} |")


def main() -> None:
    lines = [json.loads(x) for path in sys.argv[1:] for x in open(path) if x.strip()]
    order = {name: i for i, name in enumerate(TITLES)}
    lines.sort(key=lambda x: order.get(x["data"], 99))
    for line in lines:
        print(f"### {TITLES.get(line['data'], line['data'])}\n\n```\n{line['table']}\n```\n\n{blend_line(line)}\n")
    print("| data | warm R@20: shipped / best other (ratio) | cold R@20: shipped / best other (ratio) | cold vs "
          "popularity, category BT | warm cov@20 shipped / BT | warm tail R@20 shipped / BT |")
    print("|---|---|---|---|---|---|")
    for line in lines:
        print(goal_row(line))


if __name__ == "__main__":
    main()
