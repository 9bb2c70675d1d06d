"""Warm and cold queries of the test period's baskets (each anchor with its target items)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QuerySet:
    """Queries of one segment: `anchors[q]` with targets `targets[indptr[q]:indptr[q+1]]`."""

    anchors: np.ndarray  # int64 item index
    indptr: np.ndarray  # int64 (n_queries + 1,)
    targets: np.ndarray  # int64 item index (warm items)
    n_available: int  # queries before sampling

    @property
    def n_queries(self) -> int:
        return len(self.anchors)

    def target_counts(self) -> np.ndarray:
        return np.diff(self.indptr)


def _ragged_gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) - np.repeat(out_starts - starts, lengths)


def _sample(n: int, max_n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= max_n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=max_n, replace=False)).astype(np.int64)


def build_queries(basket_of_test_line: np.ndarray, item_of_test_line: np.ndarray, warm: np.ndarray,
                  cold: np.ndarray, max_queries: int, seed: int) -> tuple[QuerySet, QuerySet]:
    """Warm and cold query sets from the test lines' (basket, item) pairs."""
    n_items = len(warm)
    pairs = np.unique(np.asarray(basket_of_test_line, np.int64) * n_items
                      + np.asarray(item_of_test_line, np.int64))
    basket, item = pairs // n_items, pairs % n_items
    # Warm items of each basket as CSR over compacted basket ids (pairs are sorted by basket).
    _, basket_c = np.unique(basket, return_inverse=True)
    n_b = int(basket_c.max()) + 1 if len(basket_c) else 0
    is_warm = warm[item]
    w_basket, w_item = basket_c[is_warm], item[is_warm]
    w_count = np.bincount(w_basket, minlength=n_b)
    w_indptr = np.zeros(n_b + 1, np.int64)
    np.cumsum(w_count, out=w_indptr[1:])
    rng = np.random.default_rng(seed)

    def make(anchor_basket: np.ndarray, anchors: np.ndarray, drop_anchor: bool) -> QuerySet:
        n_available = len(anchors)
        keep = _sample(n_available, max_queries, rng)
        anchor_basket, anchors = anchor_basket[keep], anchors[keep]
        lengths = w_count[anchor_basket]
        targets = w_item[_ragged_gather(w_indptr[anchor_basket], lengths)]
        query_of = np.repeat(np.arange(len(anchors)), lengths)
        if drop_anchor:
            other = targets != anchors[query_of]
            targets, query_of = targets[other], query_of[other]
        indptr = np.zeros(len(anchors) + 1, np.int64)
        np.cumsum(np.bincount(query_of, minlength=len(anchors)), out=indptr[1:])
        return QuerySet(anchors=anchors.astype(np.int64), indptr=indptr, targets=targets.astype(np.int64),
                        n_available=n_available)

    warm_q = is_warm & (w_count[basket_c] >= 2)
    warm_set = make(basket_c[warm_q], item[warm_q], drop_anchor=True)
    cold_q = cold[item] & (w_count[basket_c] >= 1)
    cold_set = make(basket_c[cold_q], item[cold_q], drop_anchor=False)
    return warm_set, cold_set
