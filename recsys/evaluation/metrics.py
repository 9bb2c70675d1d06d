"""Metrics of one recommender on one query set: Recall@K, HitRate@K, MRR, coverage@K.

Ties break by training popularity (descending), then item id (ascending),
exactly: candidate columns are laid out in that order (`tie_break_order`)
and ranking keeps the leftmost column among equal scores
(`recsys/evaluation/ranking.py`).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from recsys.evaluation.queries import QuerySet
from recsys.evaluation.ranking import rank_rows

HEAD_ITEMS = 100  # the most bought items; targets outside them are "tail" targets


def tie_break_order(popularity: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Item indices sorted by popularity (desc), then item id (asc)."""
    ids = np.asarray(item_ids).astype(str)
    return np.lexsort((ids, -np.asarray(popularity, dtype=np.float64)))


def top_k_leftmost(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, best first; equal scores: lower column first.

    Exact and vectorised: a partition finds each row's k-th score, every
    column above it is taken, and the leftmost columns equal to it fill the
    remaining places.
    """
    scores = np.asarray(scores)
    b, m = scores.shape
    k = min(k, m)
    if k == 0 or b == 0:
        return np.zeros((b, k), dtype=np.int64)
    kth = np.partition(scores, m - k, axis=1)[:, m - k]  # k-th largest per row
    above = scores > kth[:, None]
    need = k - above.sum(axis=1)
    equal = scores == kth[:, None]
    n_equal = equal.sum(axis=1)
    chosen = above | equal
    crowded = np.flatnonzero(n_equal > need)  # more columns tie at the k-th score than places left
    if len(crowded):
        first_equal = equal[crowded] & (np.cumsum(equal[crowded], axis=1) <= need[crowded, None])
        chosen[crowded] = above[crowded] | first_equal
    cols = np.nonzero(chosen)[1].reshape(b, k)  # ascending columns within each row
    order = np.argsort(-np.take_along_axis(scores, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


@dataclass
class SegmentMetrics:
    n_queries: int
    n_available: int
    recall: dict[int, float]
    hit_rate: dict[int, float]
    mrr: float
    coverage: dict[int, float]
    score_s: float
    # Recall@K over tail targets only (outside the HEAD_ITEMS most bought), over the queries that have one:
    # where similar items must beat a popularity list
    tail_recall: dict[int, float] = field(default_factory=dict)
    n_tail_queries: int = 0

    def to_dict(self) -> dict:
        return {
            "tail_recall": {str(k): v for k, v in self.tail_recall.items()},
            "n_tail_queries": self.n_tail_queries,
            "n_queries": self.n_queries,
            "n_available": self.n_available,
            "recall": {str(k): v for k, v in self.recall.items()},
            "hit_rate": {str(k): v for k, v in self.hit_rate.items()},
            "mrr": self.mrr,
            "coverage": {str(k): v for k, v in self.coverage.items()},
            "score_s": self.score_s,
        }


class _Accumulator:
    """Sums per-query metrics over chunks."""

    def __init__(self, ks: Sequence[int], n_columns: int):
        self.ks = tuple(sorted(ks))
        self.recall = {k: 0.0 for k in self.ks}
        self.hits = {k: 0.0 for k in self.ks}
        self.rr = 0.0
        self.n = 0
        self.tail_recall = {k: 0.0 for k in self.ks}
        self.n_tail = 0
        self.covered = {k: np.zeros(n_columns, dtype=bool) for k in self.ks}

    def merge(self, other: "_Accumulator") -> "_Accumulator":
        """Add another accumulator's sums (chunks scored elsewhere, e.g. on a Dask worker)."""
        for k in self.ks:
            self.recall[k] += other.recall[k]
            self.hits[k] += other.hits[k]
            self.tail_recall[k] += other.tail_recall[k]
            self.covered[k] |= other.covered[k]
        self.rr += other.rr
        self.n += other.n
        self.n_tail += other.n_tail
        return self

    def add_ranked(self, top: np.ndarray, rank: np.ndarray, t_rows: np.ndarray, t_cols: np.ndarray,
                   m: int) -> None:
        """top: [b, >= max(ks)] best columns per row; rank: rank of each row's best target."""
        b = len(top)
        n_targets = np.bincount(t_rows, minlength=b)
        target_key = t_rows.astype(np.int64) * m + t_cols
        top_hit = np.isin(np.arange(b)[:, None] * m + top, target_key)
        for k in self.ks:
            hits = top_hit[:, :k].sum(axis=1)
            self.recall[k] += float((hits / np.minimum(n_targets, k)).sum())
            self.hits[k] += float((hits > 0).sum())
            self.covered[k][top[:, :k].ravel()] = True
        # columns are in popularity order, so the first HEAD_ITEMS columns are the most bought items
        tail = t_cols >= HEAD_ITEMS
        n_tail = np.bincount(t_rows[tail], minlength=b)
        tail_hit = np.isin(np.arange(b)[:, None] * m + top, target_key[tail])
        has_tail = n_tail > 0
        for k in self.ks:
            hits = tail_hit[:, :k].sum(axis=1)[has_tail]
            self.tail_recall[k] += float((hits / np.minimum(n_tail[has_tail], k)).sum())
        self.n_tail += int(has_tail.sum())
        self.rr += float((1.0 / rank).sum())
        self.n += b

    def result(self, n_available: int, score_s: float) -> SegmentMetrics:
        n = max(self.n, 1)
        m = max(len(next(iter(self.covered.values()))), 1)
        return SegmentMetrics(
            n_queries=self.n, n_available=n_available,
            recall={k: v / n for k, v in self.recall.items()},
            hit_rate={k: v / n for k, v in self.hits.items()},
            mrr=self.rr / n,
            coverage={k: float(c.sum()) / m for k, c in self.covered.items()},
            score_s=score_s,
            tail_recall={k: v / max(self.n_tail, 1) for k, v in self.tail_recall.items()},
            n_tail_queries=self.n_tail,
        )


def score_queries(score_fn: Callable[[np.ndarray], np.ndarray], queries: QuerySet, columns: np.ndarray,
                  n_items: int, ks: Sequence[int], mask_anchor: bool, chunk_bytes: int = 256 << 20,
                  name: str = "recommender", run_ranges=None) -> SegmentMetrics:
    """Metrics of one recommender on one query set.

    `columns`: the candidate (warm) items in tie-break order; the ranking is
    over these columns only, with the anchor itself removed when `mask_anchor`.
    """
    return score_query_variants(score_fn, {name: None}, queries, columns, n_items, ks, mask_anchor,
                                chunk_bytes, name, run_ranges)[name]


@dataclass
class ScoreJob:
    """Scoring one recommender's queries, runnable on any range of them (here, or on a Dask worker)."""

    score_fn: Callable[[np.ndarray], np.ndarray]
    variants: dict
    queries: QuerySet
    columns: np.ndarray
    n_items: int
    ks: tuple
    mask_anchor: bool
    chunk_bytes: int
    name: str

    @property
    def chunk(self) -> int:
        return max(1, self.chunk_bytes // max(1, 4 * self.n_items * 3))

    def ranges(self) -> list[tuple[int, int]]:
        n = self.queries.n_queries
        return [(lo, min(lo + self.chunk, n)) for lo in range(0, n, self.chunk)]

    @functools.cached_property
    def col_of_item(self) -> np.ndarray:
        """Each item's candidate column (-1: not a candidate); once per job, wherever it runs."""
        out = np.full(self.n_items, -1, dtype=np.int64)
        out[self.columns] = np.arange(len(self.columns))
        return out

    def __call__(self, lo: int, hi: int) -> dict[str, "_Accumulator"]:
        queries, columns, col_of_item = self.queries, self.columns, self.col_of_item
        accs = {v: _Accumulator(self.ks, len(columns)) for v in self.variants}
        for start in range(lo, hi, self.chunk):
            stop = min(start + self.chunk, hi)
            anchors = queries.anchors[start:stop]
            base = np.asarray(self.score_fn(anchors))
            if base.shape != (stop - start, self.n_items):
                raise ValueError(f"{self.name} returned scores of shape {base.shape}, "
                                 f"expected {(stop - start, self.n_items)}")
            anchor_col = col_of_item[anchors] if self.mask_anchor else np.full(stop - start, -1, np.int64)
            t_indptr = queries.indptr[start:stop + 1] - queries.indptr[start]
            t_rows = np.repeat(np.arange(stop - start), np.diff(t_indptr))
            t_cols = col_of_item[queries.targets[queries.indptr[start]:queries.indptr[stop]]]
            for variant, transform in self.variants.items():
                raw = (base if transform is None else np.asarray(transform(base))).astype(np.float32, copy=False)
                top, rank, nan = rank_rows(raw, columns, anchor_col, t_indptr, t_cols, max(self.ks))
                if nan:
                    raise ValueError(f"{variant} returned NaN scores")
                accs[variant].add_ranked(top, rank, t_rows, t_cols, len(columns))
        return accs


def serial_ranges(job: ScoreJob, ranges: list[tuple[int, int]]):
    """The default query runner: every range in this process, in order."""
    for lo, hi in ranges:
        yield job(lo, hi)


def score_query_variants(score_fn: Callable[[np.ndarray], np.ndarray],
                         variants: dict[str, Callable[[np.ndarray], np.ndarray] | None], queries: QuerySet,
                         columns: np.ndarray, n_items: int, ks: Sequence[int], mask_anchor: bool,
                         chunk_bytes: int = 256 << 20, name: str = "recommender",
                         run_ranges=None) -> dict[str, SegmentMetrics]:
    """`score_queries` for several rankings derived from one score matrix, which is computed once.

    variants: name -> a function of the raw (queries, n_items) scores (None =
    the raw scores), e.g. one popularity weight each added to a shared inner
    product: at 1M items the product is most of the cost. run_ranges(job,
    ranges) yields each range's accumulators in order (default: here, one
    after the other; recsys/jobs/dask_queries.py: as Dask tasks).
    """
    started = time.perf_counter()
    job = ScoreJob(score_fn, dict(variants), queries, np.asarray(columns), int(n_items), tuple(ks), bool(mask_anchor),
                   int(chunk_bytes), name)
    accs = {v: _Accumulator(job.ks, len(columns)) for v in variants}
    for part in (run_ranges or serial_ranges)(job, job.ranges()):
        for variant, acc in part.items():
            accs[variant].merge(acc)
    seconds = time.perf_counter() - started
    return {v: acc.result(queries.n_available, seconds) for v, acc in accs.items()}
