"""Downstream cost of index layouts: EGES Recall@20 through each compressed index, on Ta-Feng.

One EGES model is trained on the protocol's training period (one thread, so
the model is the same in every run; scorers inout_prior with the betas the
validation split chose in the full evaluation, 0.4 warm / 0.75 cold), then
for each layout a `CompressedRecommender` scores the protocol's 20,000 warm
and 1,872 cold test queries from the codes. Prints one JSON line per layout
and a summary line; how the default of `recsys.serving.index` was chosen
(docs/evaluation.md).

    python bench/index_downstream.py [--layouts default,query_pq16,...]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TAFENG_PATH, machine, tafeng_dataset  # noqa: E402

# name -> IndexConfig overrides
LAYOUTS = {
    "default": {},  # PQ65x4fs + PQ16 query side
    "fs1_query_pq8": {"query_factory": "PQ8"},
    "fs1_query_float16": {"query_factory": None},
    "fs1_query_pq16x4fs": {"query_factory": "PQ16x4fs"},
    "fs2_query_pq8": {"fast_scan_dims": 2, "query_factory": "PQ8"},  # PQ33x4fs
    "fs2_query_pq16": {"fast_scan_dims": 2, "query_factory": "PQ16"},
    "rq16_query_pq8": {"factory": "RQ16x8", "query_factory": "PQ8"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tafeng", type=Path, default=TAFENG_PATH)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args()

    from recsys.embed.train import TrainConfig
    from recsys.evaluation.metrics import score_queries
    from recsys.evaluation.protocol import EvalConfig, prepare
    from recsys.recommenders.compressed import CompressedRecommender
    from recsys.recommenders.eges import EGESRecommender
    from recsys.serving.index import IndexConfig
    from recsys.vectors import Scorer

    ds = tafeng_dataset(args.tafeng)
    prep = prepare(ds, EvalConfig(include_link_prediction=False))
    eges = EGESRecommender(TrainConfig(num_threads=1), mode="eges")
    eges.fit_with_scorers(prep.split.train, Scorer("inout_prior", 0.4), Scorer("inout_prior", 0.75))

    def recall(rec) -> tuple[float, float]:
        warm = score_queries(rec.score_warm, prep.warm_queries, prep.columns, ds.n_items, (20,), mask_anchor=True)
        cold = score_queries(rec.score_cold, prep.cold_queries, prep.columns, ds.n_items, (20,), mask_anchor=False)
        return warm.recall[20], cold.recall[20]

    base = recall(eges)
    print(json.dumps({"layout": "exact EGES", "warm_recall@20": round(base[0], 4), "cold_recall@20": round(base[1], 4)}),
          flush=True)
    for name in args.layouts.split(","):
        started = time.perf_counter()
        rec = CompressedRecommender(eges, IndexConfig(**LAYOUTS[name]))
        rec.fit(prep.split.train)
        warm, cold = recall(rec)
        index = rec.warm_index
        queries = index.query_vectors(np.arange(1000), basis=eges.cold_queries(np.arange(1000)))
        index.search(queries, 10)
        t = time.perf_counter()
        index.search(queries, 10)
        batch_s = time.perf_counter() - t
        print(json.dumps({"layout": name, "factory": index.meta["factory_used"],
                          "query_factory": index.meta["query_factory_used"],
                          "bytes_per_item": round(index.stats["bytes_per_item"], 1),
                          "recall_at_10_vs_exact": round(index.stats.get("recall_at_10", float("nan")), 3),
                          "warm_recall@20": round(warm, 4), "warm_delta": round(warm / base[0] - 1, 4),
                          "cold_recall@20": round(cold, 4), "cold_delta": round(cold / base[1] - 1, 4),
                          "batch_1000_s": round(batch_s, 4), "seconds": round(time.perf_counter() - started, 1),
                          **machine()}), flush=True)


if __name__ == "__main__":
    main()
