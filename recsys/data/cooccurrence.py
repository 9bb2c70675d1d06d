"""Co-purchase weights: how often two items were bought in one basket, recent baskets counting more.

Each basket weighs 2^(-age / half_life), its age measured from the last
purchase of the data (no half-life: every basket weighs 1, the plain
bought-together count). Two items' weight is the sum over the baskets that
hold both (an item bought twice in a basket counts once). Kept per item: the
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
                      baskets: np.ndarray | None = None) -> sp.csr_matrix:
    """Items x items decayed co-purchase weights (float64, zero diagonal)."""
    baskets = make_baskets(ds, session_gap_s) if baskets is None else baskets
    n_baskets = int(baskets.max()) + 1 if len(baskets) else 0
    x = sp.csr_matrix((np.ones(len(baskets), np.float64), (baskets, ds.purchase_item.astype(np.int64))),
                      shape=(n_baskets, ds.n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    weighted = sp.diags(basket_weights(ds, baskets, half_life_days)) @ x
    c = (x.T @ weighted).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    return c


def top_partners(matrix: sp.csr_matrix, top_m: int) -> CoPurchases:
    """Each row's `top_m` heaviest columns (ties: lower column first), as log(1 + weight) lists."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    n_rows, n_cols = matrix.shape
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(n_rows), lengths)
    # rank of each entry within its row, heaviest first: one sort over all rows
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.empty(matrix.nnz, np.int64)
    rank[order] = np.arange(matrix.nnz) - matrix.indptr[rows[order]]
    keep = rank < top_m  # entries stay in column order within their row
    rows = rows[keep]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return CoPurchases(indptr, matrix.indices[keep], np.log1p(matrix.data[keep]), n_cols)


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
