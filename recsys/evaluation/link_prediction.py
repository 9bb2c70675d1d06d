"""The EGES paper's link prediction: hide a third of the item graph's edges, embed the rest, score AUC."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from recsys.data.dataset import Dataset
from recsys.data.graph import GraphConfig, build_item_graph
from recsys.data.sessions import make_baskets


def auc_from_scores(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann-Whitney U); ties count one half."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("AUC needs at least one positive and one negative score")
    ranks = rankdata(np.concatenate([positive, negative]))
    u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def undirected_edges(graph) -> np.ndarray:
    """Unique (u, v) pairs with u < v of an ItemGraph's CSR (self-loops dropped)."""
    src = np.repeat(np.arange(graph.n_items, dtype=np.int64), np.diff(graph.indptr))
    dst = np.asarray(graph.indices, np.int64)
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = np.unique(lo[lo != hi] * graph.n_items + hi[lo != hi])
    return np.stack([key // graph.n_items, key % graph.n_items], axis=1)


def remove_edges(graph, hidden: np.ndarray):
    """A copy of `graph` without the given undirected pairs (both directions)."""
    n = graph.n_items
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
    dst = np.asarray(graph.indices, np.int64)
    key = np.minimum(src, dst) * n + np.maximum(src, dst)
    hidden_key = hidden[:, 0].astype(np.int64) * n + hidden[:, 1]
    keep = ~np.isin(key, hidden_key)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src[keep], minlength=n), out=indptr[1:])
    return dataclasses.replace(graph, indptr=indptr, indices=np.asarray(graph.indices)[keep],
                               weights=np.asarray(graph.weights)[keep])


def sample_non_edges(n_items: int, n: int, edges: np.ndarray, rng: np.random.Generator,
                     candidates: np.ndarray | None = None) -> np.ndarray:
    """`n` distinct unordered pairs (u < v) that are not in `edges`, drawn uniformly."""
    pool = np.arange(n_items) if candidates is None else np.asarray(candidates)
    m = len(pool)
    if m * (m - 1) // 2 - len(edges) < n:
        raise ValueError(f"only {m * (m - 1) // 2 - len(edges)} non-edges exist, {n} requested")
    edge_key = edges[:, 0].astype(np.int64) * n_items + edges[:, 1]
    found = np.zeros(0, np.int64)
    while len(found) < n:
        a = pool[rng.integers(0, m, size=2 * (n - len(found)) + 16)]
        b = pool[rng.integers(0, m, size=len(a))]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        key = (lo * n_items + hi)[lo != hi]
        key = key[~np.isin(key, edge_key)]
        found = np.unique(np.concatenate([found, key]))
    found = rng.permutation(found)[:n]
    return np.stack([found // n_items, found % n_items], axis=1)


def link_prediction_auc(ds: Dataset, embed_fn: Callable, seed: int = 0, hidden_fraction: float = 1 / 3,
                        session_gap_s: int = 3600, graph=None, graph_config=None,
                        max_edges: int | None = 200_000) -> float:
    """The paper's link prediction: hide a third of the item graph's edges, embed the rest.

    `embed_fn(train_graph)` returns item vectors [n_items, d] (scored by
    cosine) or a pair scorer `f(u, v) -> scores`. Hidden edges are the
    positives; as many sampled non-edges of the full graph (among items with
    an edge) are the negatives. At most `max_edges` hidden edges are scored.
    """
    if not 0.0 < hidden_fraction < 1.0:
        raise ValueError(f"hidden_fraction must be in (0, 1), got {hidden_fraction}")
    if graph is None:
        graph = build_item_graph(ds, make_baskets(ds, session_gap_s), graph_config or GraphConfig())
    rng = np.random.default_rng(seed)
    edges = undirected_edges(graph)
    if len(edges) < 3:
        raise ValueError(f"the item graph has {len(edges)} edges; link prediction needs at least 3")
    n_hidden = max(1, int(round(hidden_fraction * len(edges))))
    hidden = edges[rng.permutation(len(edges))[:n_hidden]]
    train_graph = remove_edges(graph, hidden)
    out = embed_fn(train_graph)
    positives = hidden if max_edges is None or len(hidden) <= max_edges else \
        hidden[rng.choice(len(hidden), size=max_edges, replace=False)]
    negatives = sample_non_edges(graph.n_items, len(positives), edges, rng, candidates=np.unique(edges))
    if callable(out):
        score = out
    else:
        vectors = np.asarray(out, dtype=np.float32)
        if vectors.shape[0] != graph.n_items:
            raise ValueError(f"embed_fn returned {vectors.shape[0]} vectors for {graph.n_items} items")
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

        def score(u, v):
            return np.einsum("nd,nd->n", unit[u], unit[v])
    return auc_from_scores(score(positives[:, 0], positives[:, 1]), score(negatives[:, 0], negatives[:, 1]))
