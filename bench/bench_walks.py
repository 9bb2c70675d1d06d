"""Walk benchmark: steps per second of our weighted walks against pecanpy on the same graphs.

Graphs: the Ta-Feng item graph the training flow builds, and a synthetic
power-law graph (Chung-Lu: endpoints drawn with probability proportional to a
Zipf weight, so degrees follow a power law) of 1M nodes and exactly 10M
undirected weighted edges. Both tools walk the very same CSR arrays: ours in
this process, pecanpy (numba) in its own venv as a subprocess (pecanpy pins
numpy<2), reading the graph from pecanpy's CSR `.npz` format.

A walk of length L visits L nodes (L - 1 steps); pecanpy's `walk_length` counts
steps, so it is given L - 1. Steps = visited nodes minus start nodes, counted
in each tool's output. Two timings per tool:
* walk: the walking alone (ours: `iter_walks` handed an alias table built
  beforehand; pecanpy: its numba `_random_walks` kernel after a
  warm-up call, so JIT compilation and the Python-side mapping of indices to
  node-id strings in `simulate_walks` are not counted),
* total: transition tables + walking (pecanpy's preprocessing includes numba
  compilation of its per-graph closure, which cannot be separated).
Ours is numpy, i.e. one thread; pecanpy runs with NUMBA_NUM_THREADS = 1 and 2.
pecanpy modes: PreCompFirstOrder (alias tables, the right mode for p = q = 1
weighted) and optionally SparseOTF (the general node2vec mode: per-step
transition probabilities, O(degree) per step).

    python bench/bench_walks.py [--graphs tafeng,powerlaw] [--repeat 3] [--pecanpy-threads 1,2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (PECANPY_PYTHON, PECANPY_SETUP, TAFENG_PATH, emit, load_average, log, machine,  # noqa: E402
                     median, tafeng_dataset, tafeng_graph)

PECANPY_CHILD = r"""
import json, sys, time
import numpy as np
import numba
from numba_progress import ProgressBar
from pecanpy import pecanpy as p2v

path, mode, walk_steps, walks_per_node, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
g = getattr(p2v, mode)(p=1, q=1, workers=numba.get_num_threads(), random_state=0)
g.read_npz(path, weighted=True, implicit_ids=True)
t = time.perf_counter()
g._preprocess_transition_probs()
preprocess_s = time.perf_counter() - t
move_forward, has_nbrs = g.get_move_forward(), g.get_has_nbrs()

def run(starts, seed):
    with ProgressBar(total=len(starts), disable=True) as bar:
        t = time.perf_counter()
        mat = g._random_walks(len(starts), walk_steps, seed, starts, has_nbrs, move_forward, bar)
        seconds = time.perf_counter() - t
    # the last column holds each walk's number of visited nodes
    return seconds, int(mat[:, -1].astype(np.int64).sum()) - len(starts)

nodes = np.arange(g.num_nodes, dtype=np.uint32)
run(nodes[:1000].copy(), 0)  # compiles the kernel for this graph's closures
starts = np.concatenate([nodes] * walks_per_node)
np.random.seed(0)
np.random.shuffle(starts)
runs = [run(starts, r) for r in range(repeat)]
print(json.dumps({"preprocess_s": preprocess_s, "walk_s": [r[0] for r in runs], "steps": runs[0][1],
                  "threads": numba.get_num_threads()}))
"""


def powerlaw_graph(n_nodes: int, n_edges: int, exponent: float = 2.5, seed: int = 0):
    """Chung-Lu graph with exactly `n_edges` distinct undirected edges and weights 1 + Geometric(0.5)."""
    from recsys.data.graph import ItemGraph

    rng = np.random.default_rng(seed)
    # Expected degree of node i proportional to (i + 10)^(-1/(exponent - 1)): P(degree > d) ~ d^(1 - exponent);
    # the offset caps the largest hubs at a few tens of thousands of neighbours.
    fitness = (np.arange(n_nodes) + 10.0) ** (-1.0 / (exponent - 1.0))
    cdf = np.cumsum(fitness / fitness.sum())
    keys = np.zeros(0, np.int64)
    while len(keys) < n_edges:
        draw = int((n_edges - len(keys)) * 1.3) + 1000
        a = np.minimum(np.searchsorted(cdf, rng.random(draw)), n_nodes - 1)
        b = np.minimum(np.searchsorted(cdf, rng.random(draw)), n_nodes - 1)
        keep = a != b
        lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        keys = np.unique(np.concatenate([keys, lo * n_nodes + hi]))
    keys = rng.choice(keys, size=n_edges, replace=False)
    weights = 1.0 + rng.geometric(0.5, size=n_edges)
    return ItemGraph.from_edges(n_nodes, keys // n_nodes, keys % n_nodes, weights)


def ours(graph, walk_length: int, walks_per_node: int, repeat: int) -> dict:
    import recsys.data.walks as walks

    def run(seed: int, alias_table=None) -> tuple[float, int]:
        t, steps = time.perf_counter(), 0
        for batch in walks.iter_walks(graph, walk_length, walks_per_node, seed=seed, alias_table=alias_table):
            steps += int(np.count_nonzero(batch >= 0)) - len(batch)
        return time.perf_counter() - t, steps

    total_s, walk_s, alias_s, steps = [], [], [], 0
    for r in range(repeat):
        seconds, steps = run(r)
        total_s.append(seconds)
        t = time.perf_counter()
        table = walks.build_alias_table(graph)
        alias_s.append(time.perf_counter() - t)
        # the same walks with the alias table already built: the walking alone
        walk_s.append(run(r, table)[0])
        del table
    return {"threads": 1, "steps": steps, "alias_s": round(median(alias_s), 3), "total_s": round(median(total_s), 3),
            "walk_s": round(median(walk_s), 3), "walk_steps_per_s": round(steps / median(walk_s)),
            "total_steps_per_s": round(steps / median(total_s))}


def pecanpy(npz: Path, mode: str, threads: int, walk_length: int, walks_per_node: int, repeat: int) -> dict:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    proc = subprocess.run([str(PECANPY_PYTHON), "-c", PECANPY_CHILD, str(npz), mode, str(walk_length - 1),
                           str(walks_per_node), str(repeat)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"mode": mode, "threads": threads, "error": proc.stderr.strip().splitlines()[-1:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    walk_s = median(r["walk_s"])
    return {"mode": mode, "threads": r["threads"], "steps": r["steps"], "preprocess_s": round(r["preprocess_s"], 3),
            "walk_s": round(walk_s, 3), "walk_steps_per_s": round(r["steps"] / walk_s),
            "total_steps_per_s": round(r["steps"] / (walk_s + r["preprocess_s"]))}


def bench_graph(name: str, graph, args, walks_per_node: int, workdir: Path) -> dict:
    deg = graph.degree()
    out = {"graph": name, "nodes": graph.n_items, "undirected_edges": graph.n_edges, "max_degree": int(deg.max()),
           "nodes_without_edges": int((deg == 0).sum()), "walk_length": args.walk_length,
           "walks_per_node": walks_per_node, "load_avg_before": load_average()}
    log(f"{name}: ours ({args.repeat} runs)")
    out["ours"] = ours(graph, args.walk_length, walks_per_node, args.repeat)
    out["pecanpy"] = []
    if not PECANPY_PYTHON.exists():
        out["pecanpy_error"] = f"no pecanpy venv at {PECANPY_PYTHON}; create it with: {PECANPY_SETUP}"
    else:
        npz = workdir / f"{name}.csr.npz"
        np.savez(npz, data=graph.weights, indptr=graph.indptr, indices=graph.indices)
        for mode in args.pecanpy_modes:
            wpn = walks_per_node if mode == "PreCompFirstOrder" else min(walks_per_node, args.otf_walks_per_node)
            for threads in args.pecanpy_threads:
                log(f"{name}: pecanpy {mode}, {threads} thread(s), {wpn} walks per node")
                res = pecanpy(npz, mode, threads, args.walk_length, wpn, args.repeat)
                res["walks_per_node"] = wpn
                if "walk_steps_per_s" in res:
                    res["ours_over_pecanpy_walk"] = round(out["ours"]["walk_steps_per_s"] / res["walk_steps_per_s"], 2)
                    res["ours_over_pecanpy_total"] = round(out["ours"]["total_steps_per_s"] / res["total_steps_per_s"], 2)
                out["pecanpy"].append(res)
    out["load_avg_after"] = load_average()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", default="tafeng,powerlaw", help="comma-separated: tafeng, powerlaw")
    parser.add_argument("--tafeng", type=Path, default=TAFENG_PATH)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=10_000_000)
    parser.add_argument("--walk-length", type=int, default=10)
    parser.add_argument("--walks-per-node", type=int, default=10, help="Ta-Feng (TrainConfig default)")
    parser.add_argument("--powerlaw-walks-per-node", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pecanpy-threads", default="1,2")
    parser.add_argument("--pecanpy-modes", default="PreCompFirstOrder",
                        help="comma-separated pecanpy classes, e.g. PreCompFirstOrder,SparseOTF")
    parser.add_argument("--otf-walks-per-node", type=int, default=1, help="cap for the slow SparseOTF mode")
    args = parser.parse_args()
    args.pecanpy_threads = [int(t) for t in args.pecanpy_threads.split(",") if t]
    args.pecanpy_modes = [m for m in args.pecanpy_modes.split(",") if m]

    results = []
    with tempfile.TemporaryDirectory(prefix="recsys-bench-walks-") as tmp:
        for name in [g for g in args.graphs.split(",") if g]:
            t = time.perf_counter()
            if name == "tafeng":
                graph, wpn = tafeng_graph(tafeng_dataset(args.tafeng)), args.walks_per_node
            elif name == "powerlaw":
                graph, wpn = powerlaw_graph(args.nodes, args.edges), args.powerlaw_walks_per_node
            else:
                raise SystemExit(f"unknown graph {name!r}: use tafeng or powerlaw")
            log(f"{name}: graph built in {time.perf_counter() - t:.1f}s")
            results.append(bench_graph(name, graph, args, wpn, Path(tmp)))
            del graph
    emit({"bench": "walks", "runs": args.repeat, "results": results, **machine()})


if __name__ == "__main__":
    main()
