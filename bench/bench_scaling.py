"""Scale-out stages side by side: walks in one process vs on a local Dask cluster, EGES on 1 vs N processes.

    python bench/bench_scaling.py --size tafeng|1m [--workers 2] [--processes 2] [--epochs 1]

Builds the data set (Ta-Feng, or the 1M-item synthetic shop of
docs/benchmarks.md) and its item graph, then measures (one JSON line):
one epoch of walks generated in this process and on a LocalCluster of
`--workers` worker processes (seconds, the walks compared for equality,
workers' peak RSS), and `--epochs` of EGES training on one process (all
cores) and data-parallel on `--processes` ranks sharing the cores (seconds,
pairs/s, bytes each rank sends per epoch-end sum).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TAFENG_PATH, emit, log, machine, tafeng_dataset  # noqa: E402

SHOP_1M = dict(n_items=1_000_000, n_users=500_000, n_categories=300, brands_per_category=20, n_communities=2000,
               n_baskets=3_200_000)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tafeng", "1m"), default="tafeng")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.data.walks import generate_walks
    from recsys.embed.distributed import train_data_parallel
    from recsys.embed.train import TrainConfig, train_embeddings
    from recsys.jobs.dask_walks import DaskChunkRunner

    out = {"bench": "scaling", "size": args.size, "workers": args.workers, "processes": args.processes}
    t = time.perf_counter()
    ds = tafeng_dataset(TAFENG_PATH) if args.size == "tafeng" else generate_shop(ShopConfig(**SHOP_1M)).to_dataset()
    graph = build_item_graph(ds, make_baskets(ds, 3600))
    out.update(items=ds.n_items, lines=ds.n_purchases, graph_edges=graph.n_edges,
               data_and_graph_s=round(time.perf_counter() - t, 1), driver_peak_mb_after_graph=round(peak_mb()))
    log(f"{args.size}: {ds.n_items} items, {graph.n_edges} edges")
    config = TrainConfig(epochs=args.epochs)

    t = time.perf_counter()
    single = generate_walks(graph, config.walk_length, config.walks_per_node, seed=0)
    out["walks_one_process_s"] = round(time.perf_counter() - t, 1)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        runner = DaskChunkRunner(client=client)
        t = time.perf_counter()
        on_dask = generate_walks(graph, config.walk_length, config.walks_per_node, seed=0, run_chunks=runner)
        out["walks_dask_s"] = round(time.perf_counter() - t, 1)
        out["walks_equal"] = bool(np.array_equal(single, on_dask))
        out["walk_chunks"] = runner.chunks_run
        out["dask_worker_peak_mb"] = sorted(round(v) for v in client.run(peak_mb).values())
    out["walks_n"] = int(len(single))
    del single, on_dask

    t = time.perf_counter()
    one = train_embeddings(ds, graph, config, progress=False)
    out["train_one_process_s"] = round(time.perf_counter() - t, 1)
    out["train_one_process_pairs_per_s"] = round(one.stats["pairs_per_s"])
    t = time.perf_counter()
    many = train_data_parallel(ds, graph, config, args.processes)
    out["train_data_parallel_s"] = round(time.perf_counter() - t, 1)
    out["train_data_parallel_rank0_pairs_per_s"] = round(many.stats["pairs_per_s"])
    out["bytes_per_epoch_sum_per_rank"] = int(many.stats["bytes_per_sum"])
    out["epochs"] = int(one.stats["epochs"])
    out["driver_peak_mb"] = round(peak_mb())
    emit({**out, **machine()})


if __name__ == "__main__":
    main()
