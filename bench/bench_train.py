"""Training benchmark: EGES (with side features) against gensim Word2Vec skip-gram on the same walks.

Walks: weighted walks (walk length 10, 10 per node, seed 0) on the item graph
of Ta-Feng's training period (the chronological split of `recsys.evaluation.protocol`,
test fraction 0.15), generated once; both tools train on this very array
(EGES reshuffles it each epoch; gensim gets it as sentences of item-id
tokens, with the -1 padding after dead ends dropped).

Settings: dim 64, window 5, 5 negatives, same epochs; EGES with its
dynamic window (each center draws its window from 1..5) and gensim with
`shrink_windows=True` (the same uniform 1..5 draw), sample=0, min_count=1,
sg=1, hs=0. Pairs: the exact (center, context) pairs our window generates
over the walks, counted with `recsys.embed.train.window_masks` and one window draw
per epoch; the same count serves both tools (gensim's reduced windows follow
the same distribution), and EGES's own `stats["pairs"]` is reported beside it.
Throughput = pairs / seconds of the training loop (EGES: `stats["seconds"]`;
gensim: `Word2Vec.train`, vocabulary built beforehand).

Equal time budget: each tool gets as many epochs as fit in `--budget-s`
seconds at its measured speed, trains anew with that many, and its vectors
are scored on the evaluation protocol's warm queries (Recall@20) with the
same scorers: cosine of the item vectors, and the EGES "inout" scorers
<q, c_b> (+ beta log(1 + pop_b)) with gensim's `syn1neg` as the context table.
beta is the best of one small grid on these queries for both (an oracle
choice, the same for both tools).

    python bench/bench_train.py [--epochs 1] [--repeat 3] [--threads 2,1] [--budget-s 60]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TAFENG_PATH, emit, load_average, log, machine, median, tafeng_dataset, tafeng_graph  # noqa: E402

BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def count_pairs(walks: np.ndarray, window: int, epochs: int, seed: int = 0, dynamic: bool = True) -> int:
    """Pairs the window generates over `epochs` passes, one window draw per position and epoch."""
    from recsys.embed.train import window_masks

    rng = np.random.default_rng(seed)
    total = 0
    for _ in range(epochs):
        for lo in range(0, len(walks), 1 << 16):
            for forward, backward in window_masks(walks[lo:lo + (1 << 16)], window, rng if dynamic else None):
                total += int(forward.sum()) + int(backward.sum())
    return total


def train_eges(ds, walks: np.ndarray, config):
    from recsys.embed.train import train_embeddings

    t = time.perf_counter()
    trained = train_embeddings(ds, walks, config, progress=False)
    return trained, time.perf_counter() - t


def train_gensim(sentences: list[list[str]], n_items: int, dim: int, window: int, negatives: int, epochs: int,
                 workers: int, seed: int = 0):
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=dim, window=window, negative=negatives, sample=0, min_count=1, sg=1, hs=0,
                     workers=workers, seed=seed, shrink_windows=True)
    model.build_vocab(sentences)
    t = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.perf_counter() - t
    rows = np.asarray([int(k) for k in model.wv.index_to_key], dtype=np.int64)
    item_vectors = np.zeros((n_items, dim), np.float32)
    context_vectors = np.zeros((n_items, dim), np.float32)
    item_vectors[rows] = model.wv.vectors
    context_vectors[rows] = model.syn1neg
    return SimpleNamespace(item_vectors=item_vectors, context_vectors=context_vectors), seconds


def warm_recall(vectors, prep, n_items: int) -> dict:
    """Warm Recall@20 of one set of vectors under each scorer (best beta for inout_prior)."""
    from recsys.evaluation.metrics import score_queries
    from recsys.vectors import Scorer

    log_pop = np.log1p(prep.popularity).astype(np.float32)
    out = {}
    for scorer in [Scorer("cosine")] + [Scorer("inout_prior", b) for b in BETAS]:
        items = scorer.item_matrix(vectors.item_vectors, vectors.context_vectors, log_pop)
        fn = lambda a, s=scorer, m=items: s.query_matrix(vectors.item_vectors[a]) @ m.T  # noqa: E731
        recall = score_queries(fn, prep.warm_queries, prep.columns, n_items, (20,), mask_anchor=True).recall[20]
        out["cosine" if scorer.kind == "cosine" else f"inout_prior:{scorer.beta:g}"] = round(float(recall), 4)
    best = max((k for k in out if k.startswith("inout_prior")), key=out.get)
    return {"cosine": out["cosine"], "inout": out["inout_prior:0"], "inout_prior_best": out[best],
            "best_beta": float(best.split(":")[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tafeng", type=Path, default=TAFENG_PATH)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the throughput runs")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per tool (median)")
    parser.add_argument("--threads", default="2,1",
                        help="comma-separated thread counts for both tools; the first one also runs the budget")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=60.0, help="training seconds each tool gets for recall")
    parser.add_argument("--max-queries", type=int, default=5000)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",") if t]
    logging.getLogger("gensim").setLevel(logging.WARNING)

    import torch

    from recsys.evaluation.protocol import EvalConfig, prepare
    from recsys.embed.train import TrainConfig
    from recsys.data.walks import generate_walks

    ds = tafeng_dataset(args.tafeng)
    prep = prepare(ds, EvalConfig(max_queries=args.max_queries, include_link_prediction=False))
    train = prep.split.train
    base = TrainConfig(window=args.window, dim=64, negatives=5, dynamic_window=True, max_pairs=None)
    walks = generate_walks(tafeng_graph(train), base.walk_length, base.walks_per_node, seed=0)
    sentences = [[str(i) for i in w[w >= 0]] for w in walks]
    pairs_per_epoch = count_pairs(walks, args.window, 1)
    log(f"{len(walks)} walks, {pairs_per_epoch} pairs per epoch, {prep.warm_queries.n_queries} warm queries")

    throughput = []
    for n_threads in threads:
        cfg = dataclasses.replace(base, epochs=args.epochs, num_threads=n_threads)
        eges_runs, gensim_runs = [], []
        load_before = load_average()
        for r in range(args.repeat):
            log(f"throughput run {r + 1}/{args.repeat}, {n_threads} thread(s)")
            trained, wall = train_eges(train, walks, cfg)
            eges_runs.append((trained.stats["seconds"], trained.stats["pairs"], wall))
            _, seconds = train_gensim(sentences, ds.n_items, 64, args.window, 5, args.epochs, n_threads)
            gensim_runs.append(seconds)
        counted = pairs_per_epoch * args.epochs
        eges_s, gensim_s = median(r[0] for r in eges_runs), median(gensim_runs)
        eges_pps = counted / eges_s
        gensim_pps = counted / gensim_s
        throughput.append({
            "threads": n_threads, "epochs": args.epochs, "pairs_counted": counted,
            "eges_pairs_reported": eges_runs[0][1], "eges_train_s": round(eges_s, 2),
            "eges_wall_s": round(median(r[2] for r in eges_runs), 2), "gensim_train_s": round(gensim_s, 2),
            "eges_pairs_per_s": round(eges_pps), "gensim_pairs_per_s": round(gensim_pps),
            "eges_over_gensim": round(eges_pps / gensim_pps, 3), "target": 0.5, "meets_target": eges_pps >= 0.5 * gensim_pps,
            "load_avg_before": load_before, "load_avg_after": load_average()})

    # Equal time budget, at the first thread count.
    n_threads = threads[0]
    speed = throughput[0]
    eges_epochs = max(1, math.floor(args.budget_s / (speed["eges_train_s"] / args.epochs)))
    gensim_epochs = max(1, math.floor(args.budget_s / (speed["gensim_train_s"] / args.epochs)))
    log(f"equal budget {args.budget_s}s: EGES {eges_epochs} epochs, gensim {gensim_epochs} epochs")
    load_before = load_average()
    trained, _ = train_eges(train, walks, dataclasses.replace(base, epochs=eges_epochs, num_threads=n_threads))
    eges_recall = warm_recall(trained, prep, ds.n_items)
    eges_s = trained.stats["seconds"]
    gensim_vectors, gensim_s = train_gensim(sentences, ds.n_items, 64, args.window, 5, gensim_epochs, n_threads)
    gensim_recall = warm_recall(gensim_vectors, prep, ds.n_items)
    budget = {"budget_s": args.budget_s, "threads": n_threads,
              "eges": {"epochs": eges_epochs, "train_s": round(eges_s, 1), "warm_recall@20": eges_recall},
              "gensim": {"epochs": gensim_epochs, "train_s": round(gensim_s, 1), "warm_recall@20": gensim_recall},
              "load_avg_before": load_before, "load_avg_after": load_average()}

    emit({"bench": "train", "dataset": "tafeng (training period)", "walks": len(walks),
          "walk_length": base.walk_length, "walks_per_node": base.walks_per_node, "window": args.window,
          "dim": 64, "negatives": 5, "pairs_per_epoch": pairs_per_epoch, "runs": args.repeat,
          "warm_queries": prep.warm_queries.n_queries, "torch_threads_default": torch.get_num_threads(),
          "throughput": throughput, "equal_budget": budget, **machine()})


if __name__ == "__main__":
    main()
