"""Co-purchase weights: how often two items were bought in one basket, recent baskets counting more.

Each basket weighs 2^(-age / half_life), its age measured from the last
purchase of the data (no half-life: every basket weighs 1, the plain
bought-together count). Two items' weight is the sum over the baskets that
hold both (an item bought twice in a basket counts once), or, by distinct
users (the default of the shipped ranking), the sum over the users who
bought both in one basket of their most recent such basket's weight: one
account cannot make a pair, however many orders it places. Kept per item: the
`top_m` heaviest partners, and per category the heaviest partners of its
items together (what a brand-new item of that category is answered from).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsys.blend import CoPurchases
from recsys.data.dataset import Dataset
from recsys.data.sessions import make_baskets

DAY_S = 86_400


def basket_weights(ds: Dataset, baskets: np.ndarray, half_life_days: float | None) -> np.ndarray:
    """Weight per basket: 2^(-age / half_life), age from the basket's last line to the data's last line."""
    n_baskets = int(baskets.max()) + 1 if len(baskets) else 0
    if half_life_days is None or n_baskets == 0:
        return np.ones(n_baskets, np.float64)
    if half_life_days <= 0:
        raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days}")
    last = np.full(n_baskets, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, baskets, ds.purchase_time.astype(np.int64))
    age_days = (int(ds.purchase_time.max()) - last) / DAY_S
    return np.exp2(-age_days / half_life_days)


def copurchase_matrix(ds: Dataset, session_gap_s: int = 3600, half_life_days: float | None = None,
                      baskets: np.ndarray | None = None, distinct_users: bool = False) -> sp.csr_matrix:
    """Items x items decayed co-purchase weights (float64, zero diagonal), by baskets or distinct users."""
    baskets = make_baskets(ds, session_gap_s) if baskets is None else baskets
    n_baskets = int(baskets.max()) + 1 if len(baskets) else 0
    x = sp.csr_matrix((np.ones(len(baskets), np.float64), (baskets, ds.purchase_item.astype(np.int64))),
                      shape=(n_baskets, ds.n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    weights = basket_weights(ds, baskets, half_life_days)
    if distinct_users:
        owner = np.zeros(n_baskets, np.int64)
        owner[baskets] = ds.purchase_user
        return _by_distinct_users(x, weights, owner)
    c = (x.T @ (sp.diags(weights) @ x)).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    return c


def _by_distinct_users(x: sp.csr_matrix, weights: np.ndarray, owner: np.ndarray,
                       max_pairs: int = 20_000_000) -> sp.csr_matrix:
    """Sum over users of the heaviest basket weight with which each user bought each pair.

    Pairs are enumerated basket by basket in chunks of about `max_pairs`, cut
    between users (a user's baskets have consecutive ids), so memory stays flat.
    """
    n_items = x.shape[1]
    sizes = np.diff(x.indptr)
    pairs_per_basket = sizes * (sizes - 1) // 2
    total = sp.csr_matrix((n_items, n_items), dtype=np.float64)
    n_baskets = len(sizes)
    cum = np.cumsum(pairs_per_basket)
    boundaries = np.append(np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]]), n_baskets)  # users' first baskets
    start = 0
    while start < n_baskets:
        want = int(np.searchsorted(cum, (cum[start - 1] if start else 0) + max_pairs, "right"))
        stop = int(boundaries[np.searchsorted(boundaries, want, "right") - 1])
        if stop <= start:  # one user beyond max_pairs: take that user whole
            stop = int(boundaries[np.searchsorted(boundaries, start, "right")])
        b = np.arange(start, stop)
        later = np.repeat(sizes[b], sizes[b]) - 1 - _within(sizes[b])  # items after each row in its basket
        rows = np.arange(x.indptr[start], x.indptr[stop])
        a_rows = np.repeat(rows, later)
        b_rows = a_rows + 1 + _within(later)
        basket_of_pair = np.repeat(np.repeat(b, sizes[b]), later)
        lo, hi = x.indices[a_rows].astype(np.int64), x.indices[b_rows].astype(np.int64)
        key = np.minimum(lo, hi) * n_items + np.maximum(lo, hi)
        user = owner[basket_of_pair]
        w = weights[basket_of_pair]
        order = np.lexsort((-w, user, key))  # per (pair, user) the heaviest basket first
        key, user, w = key[order], user[order], w[order]
        first = np.ones(len(key), bool)
        first[1:] = (key[1:] != key[:-1]) | (user[1:] != user[:-1])
        key, w = key[first], w[first]
        upper = sp.coo_matrix((w, (key // n_items, key % n_items)), shape=(n_items, n_items)).tocsr()
        total = total + upper
        start = stop
    c = (total + total.T).tocsr()
    c.eliminate_zeros()
    return c


def _within(counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(c) for c in counts."""
    counts = np.asarray(counts, np.int64)
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def top_partners(matrix: sp.csr_matrix, top_m: int) -> CoPurchases:
    """Each row's `top_m` heaviest columns (ties: lower column first), as log(1 + weight) lists."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    n_rows, n_cols = matrix.shape
    rows = np.repeat(np.arange(n_rows), np.diff(matrix.indptr))
    return CoPurchases.top(rows, matrix.indices, matrix.data, n_rows, n_cols, top_m)


def category_best_sellers(ds: Dataset, top_m: int, candidates: np.ndarray) -> CoPurchases:
    """Per category code: its `top_m` most bought candidate items (a new item's own kind, in its pool)."""
    codes = ds.category.codes.astype(np.int64)
    counts = np.bincount(ds.purchase_item, minlength=ds.n_items).astype(np.float64)
    keep = np.flatnonzero((codes > 0) & np.asarray(candidates, bool) & (counts > 0))
    members = sp.csr_matrix((counts[keep], (codes[keep], keep)), shape=(ds.category.cardinality, ds.n_items))
    return top_partners(members, top_m)


def category_partners(ds: Dataset, matrix: sp.csr_matrix, top_m: int) -> CoPurchases:
    """Per category code: the heaviest partners of its items together (row 0, missing, has none)."""
    codes = ds.category.codes.astype(np.int64)
    known = np.flatnonzero(codes > 0)
    membership = sp.csr_matrix((np.ones(len(known)), (codes[known], known)),
                               shape=(ds.category.cardinality, ds.n_items))
    return top_partners((membership @ matrix).tocsr(), top_m)
