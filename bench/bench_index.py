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
without a filter that keeps 10% of the items, through `SimilarityIndex.search`;
then the same index is written into a version bundle (random catalogue
metadata: 50 categories, 20 brands, prices) and opened with `recsys.Client`:
`Client.similar` p50/p99, `similar_batch` of 1,000 ids, and
`similar_to_new_item` p50 (`client_*` fields; `--no-client` skips them).
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

    from recsys.serving.index import IndexConfig, SimilarityIndex, measure_recall

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
    client = {} if args.no_client else client_latency(index, args)
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
        **client,
    }


def client_latency(index, args) -> dict:
    """Write the index into a bundle with a random catalogue and time the public client on it."""
    import shutil
    import tempfile

    from recsys.serving import bundle as B
    from recsys.serving.client import Client
    from recsys.vectors import price_tier_codes

    n, dim = index.n_items, index.dim - 1  # the last column is the prior (inout_prior scorer)
    rng = np.random.default_rng(args.seed + 2)
    categories = ["<missing>"] + [f"category-{i}" for i in range(50)]
    brands = ["<missing>"] + [f"brand-{i}" for i in range(20)]
    tiers = ["<missing>"] + [f"tier{i}" for i in range(1, 5)]
    values = {"category": categories, "brand": brands, "price_tier": tiers}
    tables = {name: rng.normal(scale=0.1, size=(len(v), dim)).astype(np.float32) for name, v in values.items()}
    for table in tables.values():
        table[0] = 0.0
    edges = np.array([10.0, 30.0, 60.0])
    category = rng.integers(1, len(categories), n).astype(np.int32)
    brand = rng.integers(0, len(brands), n).astype(np.int32)
    price = rng.uniform(1, 100, n).astype(np.float32)
    codes = np.stack([category, brand, price_tier_codes(price, edges)], axis=1).astype(np.int32)
    items = B.ItemTable(item_ids=np.array([f"item-{i}" for i in range(n)], dtype=np.str_), category=category,
                        category_values=categories, brand=brand, brand_values=brands, price=price,
                        in_stock=rng.random(n) < 0.9, feature_codes=codes,
                        attention_logits=rng.normal(size=(n, 4)).astype(np.float32),
                        index_row=np.arange(n, dtype=np.int32))
    model = B.ModelTables(feature_names=list(values), feature_values=values, side_tables=tables,
                          price_tier_edges=edges, config={"mode": "eges", "dim": dim, "cold_start": "id_dropout"})
    parts = B.BundleParts(items=items, model=model, indexes={"warm": index},
                          scorers={"warm": {"kind": "inout_prior", "beta": 0.3}}, metrics={},
                          watermark={"n_items": n})
    if not args.no_graph:
        parts.graph = random_graph_evidence(n, len(categories), rng, top_m=args.top_m, interleave=args.interleave)
    root = tempfile.mkdtemp(prefix="bench-index-bundle-")
    try:
        client = Client.open(B.write_bundle(root, None, parts))
        ids = [f"item-{i}" for i in rng.choice(n, max(1000, args.single_queries), replace=False)]
        client.similar(ids[0], k=10)  # warm-up
        single = []
        for item_id in ids[:args.single_queries]:
            t = time.perf_counter()
            client.similar(item_id, k=10)
            single.append(time.perf_counter() - t)
        client.similar_batch(ids[:1000], k=10)  # first batch: decodes and caches the codes
        t = time.perf_counter()
        client.similar_batch(ids[:1000], k=10)
        batch_s = time.perf_counter() - t
        t = time.perf_counter()
        client.similar_batch(ids[:1000], k=10, as_arrays=True)
        batch_arrays_s = time.perf_counter() - t
        new = []
        for c in range(args.single_queries):
            t = time.perf_counter()
            client.similar_to_new_item(category=categories[1 + c % 50], brand=brands[1 + c % 20], price=25.0, k=10)
            new.append(time.perf_counter() - t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ms = lambda xs, p: round(1e3 * float(np.percentile(xs, p)), 4)
    return {"client_graph": not args.no_graph, "top_m": args.top_m, "interleave": args.interleave,
            "client_similar_p50_ms": ms(single, 50), "client_similar_p99_ms": ms(single, 99),
            "client_similar_batch_1000_s": round(batch_s, 4),
            "client_similar_batch_1000_arrays_s": round(batch_arrays_s, 4),
            "client_new_item_p50_ms": ms(new, 50), "client_new_item_p99_ms": ms(new, 99)}


def random_graph_evidence(n: int, n_categories: int, rng, top_m: int = 100, interleave: int = 0):
    """The shipped ranking's re-ranking evidence with full lists: top_m partners per item and category, every
    blend weight non-zero (the client's slowest path)."""
    from recsys.blend import Blend, CoPurchases
    from recsys.serving.bundle import GraphEvidence

    def lists(n_anchors: int) -> CoPurchases:
        partners = np.sort(rng.integers(0, n, (n_anchors, top_m)), axis=1)
        partners[:, 1:][partners[:, 1:] == partners[:, :-1]] = -1
        keep = partners >= 0
        indptr = np.zeros(n_anchors + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        weight = rng.gamma(1.0, 1.0, keep.sum()).astype(np.float32)
        return CoPurchases(indptr, partners[keep], weight, n)

    blend = Blend((0.6, -0.2, 0.4, 0.3, 0.05, 0.1), pool=100, interleave=interleave)
    return GraphEvidence(blend, blend, lists(n), lists(n_categories), rng.gamma(2.0, 1.0, n).astype(np.float32),
                         rng.gamma(8.0, 1.0, n_categories).astype(np.float32), lists(n_categories), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64, help="embedding width (a prior column is added)")
    parser.add_argument("--vectors", help="float32 .npy (n, d) of candidate vectors instead of the mixture")
    parser.add_argument("--queries", help="float32 .npy (n, d) query side for --vectors (default: same)")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--query-factory", help="query-side codec; 'float16' for uncoded (default: auto)")
    parser.add_argument("--rerank")
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--single-queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0 = FAISS default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-client", action="store_true", help="skip the bundle + Client measurements")
    parser.add_argument("--no-graph", action="store_true",
                        help="client without the shipped ranking's co-purchase re-ranking (format-1 path)")
    parser.add_argument("--top-m", type=int, default=100, help="co-purchase partners per item in the bundle")
    parser.add_argument("--interleave", type=int, default=0,
                        help="the blend gives every n-th place to co-purchases (recsys/blend.py; 0 = not)")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
