"""Benchmark of the compressed index: prints one JSON line.

    python bench/bench_index.py [--n-items 100000] [--dim 64] [--factory auto] [--vectors items.npy]

Without --vectors the candidates are a Gaussian mixture (clusters of uneven
size, like product categories) plus a Zipf popularity-prior column, and each
item's query vector is a noisy copy of its own vector with weight 1 on the
prior, the shape of the EGES "inout_prior" scorer. With --vectors FILE.npy
(float32 (n, d), loaded without pickle) those rows are both sides (and
--queries FILE.npy gives a separate query side).

Reported: bytes per item (serialized, both sides), build seconds, recall@10
against exact inner-product search (coded query side, so end to end),
single-query p50/p99 latency and the time of one 1000-query batch, with and
without a filter that keeps 10% of the items.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np


def mixture(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries) with realistic structure: uneven clusters, popularity prior column."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, int(np.sqrt(n)))
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    labels = rng.choice(n_clusters, n, p=weights / weights.sum())
    items = np.empty((n, dim + 1), np.float32)
    queries = np.empty((n, dim + 1), np.float32)
    for start in range(0, n, 200_000):  # blocks keep peak memory low at 1M items
        stop = min(n, start + 200_000)
        body = centers[labels[start:stop]] + 0.6 * rng.normal(size=(stop - start, dim)).astype(np.float32)
        items[start:stop, :dim] = body
        queries[start:stop, :dim] = body + 0.3 * rng.normal(size=(stop - start, dim)).astype(np.float32)
    items[:, dim] = 0.25 * np.log1p(rng.zipf(1.3, n).clip(max=1_000_000))
    queries[:, dim] = 1.0
    return items, queries


def run(args) -> dict:
    import faiss

    from recsys.index import IndexConfig, SimilarityIndex, measure_recall

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.vectors:
        items = np.load(args.vectors, allow_pickle=False).astype(np.float32)
        queries = np.load(args.queries, allow_pickle=False).astype(np.float32) if args.queries else items
        source = args.vectors
    else:
        items, queries = mixture(args.n_items, args.dim, args.seed)
        source = "gaussian mixture + prior column"
    n = len(items)
    overrides = {"factory": args.factory, "nprobe": args.nprobe, "recall_queries": 0, "seed": args.seed}
    if args.rerank:
        overrides["rerank"] = args.rerank
    if args.query_factory:
        overrides["query_factory"] = None if args.query_factory == "float16" else args.query_factory
    config = dataclasses.replace(IndexConfig(), **overrides)
    started = time.perf_counter()
    index = SimilarityIndex.build(items, queries, config)
    build_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed + 1)
    rows = rng.choice(n, 1000, replace=False)
    coded = index.query_vectors(rows)
    recall = measure_recall(index, items, coded, k=10, truth_queries=queries[rows])
    allowed = rng.random(n) < 0.1

    def latencies(extra: dict) -> list[float]:
        out = []
        for q in coded[:args.single_queries]:
            t = time.perf_counter()
            index.search(q[None], 10, **extra)
            out.append(time.perf_counter() - t)
        return out

    index.search(coded[:10], 10)  # warm-up
    single = latencies({})
    filtered = latencies({"allowed": allowed})
    t = time.perf_counter()
    index.search(coded, 10)
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    index.search(coded, 10, allowed=allowed)
    batch_filtered_s = time.perf_counter() - t
    stats = index.stats
    ms = lambda xs, p: round(1e3 * float(np.percentile(xs, p)), 4)
    return {
        "n_items": n, "dim": int(items.shape[1]), "vectors": source, "factory": index.meta["factory_used"],
        "query_factory": index.meta["query_factory_used"], "query_side": index.meta["query_side"],
        "rerank": config.rerank, "nprobe": config.nprobe, "faiss_threads": faiss.omp_get_max_threads(),
        "bytes_per_item": round(stats["bytes_per_item"], 3),
        "float32_bytes_per_item": 4 * int(items.shape[1]) * (1 if queries is items else 2),
        "candidate_bytes": stats["candidate_bytes"], "query_bytes": stats["query_bytes"],
        "rerank_bytes": stats["rerank_bytes"], "build_s": round(build_s, 2), "recall_at_10": round(recall, 4),
        "single_query_p50_ms": ms(single, 50), "single_query_p99_ms": ms(single, 99),
        "filtered10pct_p50_ms": ms(filtered, 50), "filtered10pct_p99_ms": ms(filtered, 99),
        "batch_1000_s": round(batch_s, 4), "batch_1000_filtered10pct_s": round(batch_filtered_s, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64, help="embedding width (a prior column is added)")
    parser.add_argument("--vectors", help="float32 .npy (n, d) of candidate vectors instead of the mixture")
    parser.add_argument("--queries", help="float32 .npy (n, d) query side for --vectors (default: same)")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--query-factory", help="query-side codec; 'float16' for uncoded (default: auto)")
    parser.add_argument("--rerank")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--single-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = FAISS default)")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
