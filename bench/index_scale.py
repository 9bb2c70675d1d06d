"""The compressed index at every scale: downstream Recall@20 exact vs through each layout, size, speed.

Two stages, so that the index layouts can be compared on one trained model:

    python bench/index_scale.py prepare --size 200k [--cache DIR]   # data, EGES on the training period
    python bench/index_scale.py layouts --size 200k [--layouts a,b] [--shards 2,4]

`prepare` builds the data set (Ta-Feng for "24k"; a synthetic shop of
`recsys.data.synthetic` for "200k" and "1m", the shapes of
docs/benchmarks.md), splits it by the evaluation protocol (last 15% of
purchases by time), trains EGES on the training period with the scorers
inout_prior beta 0.4 warm / 0.75 cold (what validation chose on Ta-Feng),
and stores the vectors and the test queries as .npy files in the cache
folder. `layouts` builds each candidate layout of
`recsys.jobs.index_check` (or the named ones) with `build_scorer_indexes`,
the function a bundle uses, and prints one JSON line per layout: bytes per
item (every index file), build seconds, warm and cold Recall@20 exact vs
through the index (`SimilarityIndex.search`, the client's path: coded query
side for warm anchors, side-feature vectors for cold ones), single-query
p50/p99 and a 1,000-query batch; `--shards` also splits the chosen layout
into shards and checks the results are identical.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TAFENG_PATH, emit, log, machine, tafeng_dataset  # noqa: E402

SHOPS = {
    "200k": dict(n_items=200_000, n_users=100_000, n_categories=150, brands_per_category=20, n_communities=400,
                 n_baskets=640_000),
    "1m": dict(n_items=1_000_000, n_users=500_000, n_categories=300, brands_per_category=20, n_communities=2000,
               n_baskets=3_200_000),
}
WARM_BETA, COLD_BETA = 0.4, 0.75
MAX_QUERIES = 5000


def prepare_stage(size: str, cache: Path, threads: int) -> None:
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.embed.train import TrainConfig
    from recsys.evaluation.protocol import EvalConfig, prepare
    from recsys.recommenders.eges import EGESRecommender
    from recsys.vectors import Scorer, log_popularity

    started = time.perf_counter()
    if size == "24k":
        ds = tafeng_dataset(TAFENG_PATH)
    else:
        ds = generate_shop(ShopConfig(**SHOPS[size])).to_dataset()
    log(f"{size}: {ds.n_items} items, {ds.n_purchases} lines ({time.perf_counter() - started:.0f}s)")
    prep = prepare(ds, EvalConfig(max_queries=MAX_QUERIES, include_link_prediction=False))
    train = prep.split.train
    rec = EGESRecommender(TrainConfig(num_threads=threads), mode="eges")
    t = time.perf_counter()
    rec.fit_with_scorers(train, Scorer("inout_prior", WARM_BETA), Scorer("inout_prior", COLD_BETA))
    log(f"{size}: EGES trained in {time.perf_counter() - t:.0f}s")
    trained = rec.trained
    cache.mkdir(parents=True, exist_ok=True)
    arrays = {
        "item_vectors": trained.item_vectors, "context_vectors": trained.context_vectors,
        "log_pop": log_popularity(train.purchase_item, train.n_items),
        "cold_vectors": rec.cold_queries(np.arange(train.n_items)),
        "indexed": np.asarray(trained.item_counts) > 0,
    }
    for segment, queries in (("warm", prep.warm_queries), ("cold", prep.cold_queries)):
        arrays[f"{segment}_anchors"], arrays[f"{segment}_indptr"] = queries.anchors, queries.indptr
        arrays[f"{segment}_targets"] = queries.targets
    for name, value in arrays.items():
        np.save(cache / f"{name}.npy", np.asarray(value), allow_pickle=False)
    (cache / "info.json").write_text(json.dumps({"size": size, "n_items": ds.n_items, "n_purchases": ds.n_purchases,
                                                 "prepare_s": round(time.perf_counter() - started, 1)}))
    log(f"{size}: cached in {cache}")


def load_cache(cache: Path):
    from recsys.jobs.index_check import CheckQueries

    a = {p.stem: np.load(p, allow_pickle=False) for p in cache.glob("*.npy")}
    rows = np.flatnonzero(a["indexed"])
    index_row = np.full(len(a["indexed"]), -1, np.int64)
    index_row[rows] = np.arange(len(rows))
    queries = CheckQueries.from_item_queries(index_row, a["cold_vectors"],
                                             (a["warm_anchors"], a["warm_indptr"], a["warm_targets"]),
                                             (a["cold_anchors"], a["cold_indptr"], a["cold_targets"]))
    return a, rows, queries


def latency(index, queries: np.ndarray, k: int = 10) -> dict:
    index.search(queries[:50], k)
    times = []
    for q in queries[:300]:
        t = time.perf_counter()
        index.search(q[None, :], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search(queries[:1000], k)
    batch = time.perf_counter() - t
    return {"search_p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
            "search_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3), "batch_1000_ms": round(batch * 1e3, 1)}


def query_sample(index, side: np.ndarray, n: int = 1000) -> np.ndarray:
    """The decoded query vectors of the first n indexed items (their side-feature basis passed)."""
    rows = np.arange(min(n, index.n_items))
    return index.query_vectors(rows, basis=side[rows] if index.meta.get("query_basis_dim") else None)


def layouts_stage(size: str, cache: Path, names: list[str] | None, shards: list[int], client: bool) -> None:
    from recsys.jobs.index_check import candidate_layouts, check_indexes, index_bytes_per_item
    from recsys.serving.index import build_scorer_indexes
    from recsys.vectors import Scorer

    a, rows, queries = load_cache(cache)
    warm, cold = Scorer("inout_prior", WARM_BETA), Scorer("inout_prior", COLD_BETA)
    iv, cv, lp, cold_vecs = (a["item_vectors"][rows], a["context_vectors"][rows], a["log_pop"][rows],
                             a["cold_vectors"][rows])
    layouts = candidate_layouts(len(rows), names=tuple(names or ()))
    for name, config in layouts.items():
        t = time.perf_counter()
        indexes = build_scorer_indexes(iv, cv, lp, lambda: cold_vecs, warm, cold, config)
        build_s = time.perf_counter() - t
        result = check_indexes(indexes, warm, cold, iv, cv, lp, queries)
        index = indexes["warm"]
        record = {"bench": "index_scale", "size": size, "layout": name, "n_indexed": int(len(rows)),
                  "factory": index.meta["factory_used"], "query_factory": index.meta["query_factory_used"],
                  "bytes_per_item": round(index_bytes_per_item(indexes), 1), "build_s": round(build_s, 1),
                  **result, **latency(index, query_sample(index, cold_vecs)), **machine()}
        emit(record)
        if client:
            emit({**record, "client": True, **client_numbers(index)})
        for n_shards in shards:
            t = time.perf_counter()
            sharded = build_scorer_indexes(iv, cv, lp, lambda: cold_vecs, warm, cold,
                                           dataclasses.replace(config, shards=n_shards))
            build_s = time.perf_counter() - t
            q = query_sample(index, cold_vecs)
            s1, i1 = index.search(q, 20)
            s2, i2 = sharded["warm"].search(q, 20)
            result = check_indexes(sharded, warm, cold, iv, cv, lp, queries)
            shard_record = {"bench": "index_scale", "size": size, "layout": name, "shards": n_shards,
                            "n_indexed": int(len(rows)), "bytes_per_item": round(index_bytes_per_item(sharded), 1),
                            "build_s": round(build_s, 1), "same_scores": bool(np.array_equal(s1, s2)),
                            "same_ids_share": float((i1 == i2).mean()), **result,
                            **latency(sharded["warm"], q), **machine()}
            emit(shard_record)
            if client:
                emit({**shard_record, "client": True, **client_numbers(sharded["warm"])})


def client_numbers(index) -> dict:
    """`Client` latencies on this index in a bundle with a random catalogue and graph evidence
    (bench_index.client_latency: the shipped ranking's slowest path)."""
    import argparse as _argparse

    import bench_index

    return bench_index.client_latency(index, _argparse.Namespace(seed=0, no_graph=False, top_m=100,
                                                                 single_queries=300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("prepare", "layouts"))
    parser.add_argument("--size", choices=("24k", "200k", "1m"), required=True)
    parser.add_argument("--cache", type=Path, default=None, help="default /tmp/recsys-index-scale/SIZE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layouts", default="", help="comma-separated names (default: the check's candidates)")
    parser.add_argument("--shards", default="", help="e.g. 2,4: also split the layout into shards")
    parser.add_argument("--client", action="store_true", help="also time recsys.Client on each index")
    args = parser.parse_args()
    cache = args.cache or Path("/tmp/recsys-index-scale") / args.size
    if args.stage == "prepare":
        prepare_stage(args.size, cache, args.threads)
    else:
        layouts_stage(args.size, cache, [n for n in args.layouts.split(",") if n] or None,
                      [int(s) for s in args.shards.split(",") if s], args.client)


if __name__ == "__main__":
    main()
