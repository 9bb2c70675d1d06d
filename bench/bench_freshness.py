"""The freshness replay of docs/robustness.md: a version trained on the training period, refreshed after each test day.

    python bench/bench_freshness.py [--data tafeng] [--max-queries-per-day 3000] [--out FILE]

The version is trained as the nightly flow trains it (recsys/jobs/pipeline.py,
defaults) on the evaluation split's training period (all but the last 15% of
purchases). Then the test period is replayed day by day: each day's baskets
query (every item of a basket with 2+ items, its targets the basket's other
items, Recall@20 = hits / min(targets, 20)) two clients, the version as
trained and the version refreshed with every earlier test day's purchases
(recsys/jobs/refresh.py, as `recsys refresh` runs it: each refresh rebuilds
the patch from the version with everything since; Ta-Feng records one
timestamp per customer and day, so a day is the finest refresh it allows).
Reported per day and in total: all queries, and the "fresh" ones, whose
anchor or a target was first bought after the version was trained; and the
refresh's run time (folding in, writing the patch bundle and opening it in a
client; the database read comes on top). One JSON line per day, then one
summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, machine  # noqa: E402
from evaluate_datasets import dataset  # noqa: E402

DAY = 86_400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tafeng")
    parser.add_argument("--max-queries-per-day", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np

    from recsys import Client
    from recsys.data.dataset import subset_purchases
    from recsys.data.sessions import make_baskets
    from recsys.evaluation.split import split_chronological
    from recsys.jobs import pipeline
    from recsys.embed.fold_in import FoldInConfig
    from recsys.jobs.refresh import RefreshConfig, fold_in_purchases
    from recsys.serving import bundle as B
    from recsys.serving.patch import as_patch

    def emit_cell(record: dict) -> None:
        emit({**record, **machine()}, args.out)

    ds = dataset(args.data)
    split = split_chronological(ds)
    train = split.train
    config = pipeline.PipelineConfig.from_dict({"train": {"num_threads": args.threads}})
    started = time.perf_counter()
    shipped = pipeline.train_final(train, config, progress=False)
    parts = pipeline.build_parts(shipped, train, config, metrics={})
    train_s = time.perf_counter() - started
    log(f"trained the version in {train_s:.0f}s")
    folder = Path(tempfile.mkdtemp(prefix="freshness-"))
    full = B.open_bundle(B.write_bundle(folder, None, parts))
    root_version = full.version
    base = fresh_client = lists_client = Client.open(full.path)
    since_version = np.zeros(ds.n_purchases, bool)
    seen_before = set(ds.user_ids[np.unique(train.purchase_user)].tolist())  # what `recsys refresh` asks Postgres
    # the ablation: co-purchase lists refreshed, no item folded in (so no new vectors)
    lists_only = RefreshConfig(fold_in=FoldInConfig(min_buyers=2**31 - 1))
    warm = np.bincount(train.purchase_item, minlength=ds.n_items) > 0
    baskets = make_baskets(ds)
    test_lines = np.flatnonzero(split.test_mask)
    day_of = (ds.purchase_time - split.test_starts_at) // DAY
    rng = np.random.default_rng(0)
    totals = {f"{segment}_{name}": {"queries": 0, "recall": 0.0}
              for segment in ("all", "fresh", "fresh_anchor", "fresh_target_only")
              for name in ("version", "refreshed", "lists_only")}
    refresh_seconds = []
    for day in range(int(day_of[test_lines].max()) + 1):
        lines = test_lines[day_of[test_lines] == day]
        if len(lines) == 0:
            continue
        # the day's queries: each item of a basket of 2+ distinct items, its targets the others
        anchors, targets = [], []
        for b in np.unique(baskets[lines]):
            members = np.unique(ds.purchase_item[lines[baskets[lines] == b]])
            if len(members) < 2:
                continue
            for a in members:
                anchors.append(int(a))
                targets.append(members[members != a])
        if len(anchors) > args.max_queries_per_day:
            pick = np.sort(rng.choice(len(anchors), args.max_queries_per_day, replace=False))
            anchors, targets = [anchors[i] for i in pick], [targets[i] for i in pick]
        is_fresh = np.array([not warm[a] or not warm[t].all() for a, t in zip(anchors, targets)])
        segments = {"fresh": is_fresh, "fresh_anchor": np.array([not warm[a] for a in anchors]),
                    "fresh_target_only": np.array([warm[a] and not warm[t].all() for a, t in zip(anchors, targets)])}
        ids = ds.item_ids[np.asarray(anchors, np.int64)].tolist()
        day_record = {"bench": "freshness", "data": args.data, "day": day, "queries": len(anchors),
                      "fresh_queries": int(is_fresh.sum()), "version": fresh_client.version}
        for name, client in (("version", base), ("refreshed", fresh_client), ("lists_only", lists_client)):
            results = client.similar_batch(ids, k=20, as_arrays=True)
            recalls = np.zeros(len(anchors))
            for q, target in enumerate(targets):
                got = set(results.item_ids[q][:results.counts[q]].tolist())
                recalls[q] = len(got & set(ds.item_ids[target].tolist())) / min(len(target), 20)
            day_record[f"recall@20_{name}"] = float(recalls.mean())
            day_record[f"fresh_recall@20_{name}"] = float(recalls[is_fresh].mean()) if is_fresh.any() else None
            totals[f"all_{name}"]["queries"] += len(anchors)
            totals[f"all_{name}"]["recall"] += float(recalls.sum())
            for segment, member in segments.items():
                totals[f"{segment}_{name}"]["queries"] += int(member.sum())
                totals[f"{segment}_{name}"]["recall"] += float(recalls[member].sum())
        # then the day's purchases are folded in (the next day is answered by the refreshed version)
        t0 = time.perf_counter()
        since_version[lines] = True  # every purchase since the version, as each refresh rebuilds from it
        folded, record = fold_in_purchases(full.parts, subset_purchases(ds, since_version), RefreshConfig(),
                                           seen_before)
        if folded is not None:  # what `recsys refresh` does besides reading the database: write, and serve
            path = B.write_bundle(folder, f"{root_version}.p{day + 1}", as_patch(full, folded))
            fresh_client = Client.open(path)
        refresh_seconds.append(time.perf_counter() - t0)
        listed, _ = fold_in_purchases(full.parts, subset_purchases(ds, since_version), lists_only, seen_before)
        if listed is not None:
            lists_client = Client.open(B.write_bundle(folder, f"{root_version}.p{day + 1001}", as_patch(full, listed)))
        day_record.update({"refresh_s": round(refresh_seconds[-1], 2), "folded_items": record.get("fresh_items", 0),
                           "too_few_buyers": record.get("too_few_buyers", 0)})
        emit_cell(day_record)
        log(f"day {day}: {json.dumps({k: v for k, v in day_record.items() if k != 'bench'}, default=float)}")
    emit_cell({"bench": "freshness", "data": args.data, "summary": True, "train_s": round(train_s, 1),
          **{f"recall@20_{name}": t["recall"] / max(t["queries"], 1) for name, t in totals.items()},
          **{f"queries_{name}": t["queries"] for name, t in totals.items()},
          "refresh_s_median": float(np.median(refresh_seconds)), "refresh_s_max": float(np.max(refresh_seconds))})


if __name__ == "__main__":
    main()
