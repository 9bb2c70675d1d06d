"""The weighted item graph that random walks run on (EGES paper, section 2.2).

The paper links consecutive items of a user's behaviour sequence and weights
each undirected edge by how often the pair occurred. Shops rarely record the
order of items inside a basket (Ta-Feng has one timestamp per day, an
invoice has one timestamp for all its lines), so a basket is turned into
edges by one of two rules (`GraphConfig.within_basket`):

* "sequence": consecutive items in time order (ties by line order), weight 1
  each: the paper's rule, right when the lines carry real times.
* "clique": every pair of the basket's n distinct items, weight 2/n each.
  Without an internal order any chain would be an arbitrary one, so all
  pairs get the same share; 2/n makes the basket contribute n-1 in total,
  exactly what the sequence of the same n items would, so big baskets do
  not drown small ones and both rules mix on one scale. (Each item gets
  2(n-1)/n, about what an item inside a sequence gets.)
* "auto" (default): "sequence" for baskets whose items all have distinct
  timestamps (a recorded order), "clique" for the others (one timestamp, or
  ties that leave the order partly arbitrary, e.g. an invoice whose lines
  straddle a minute).

Baskets of one user that follow each other within `link_gap_s` (two orders
placed in the same hour: the paper's one-hour session) are linked too: every
item of the earlier basket to every item of the later one, weight
`link_weight / (|A| |B|)`, i.e. one transition shared out. Order-less lines
are already one basket up to the session gap, so this only joins orders.

Noise filters (paper: spam users, too long sessions, rare pairs) and the
defences against fake purchases live in `GraphConfig`: one account adds at
most `max_user_edge_weight` to an edge however often it buys the pair (an
edge counts distinct users, not lines), an edge may require
`min_edge_users` distinct accounts behind it, and accounts may weigh by
inverse activity (`user_weighting`). Items within a basket are de-duplicated (first occurrence in
time order) and self-loops dropped. The result is a symmetric CSR matrix.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.data.sessions import basket_index

WITHIN_BASKET_RULES = ("auto", "clique", "sequence")
OVERSIZE_POLICIES = ("subsample", "skip")


@dataclass
class GraphConfig:
    """How purchases become edges, and the paper's noise filters."""

    within_basket: str = "auto"  # "auto" | "clique" | "sequence" (module docstring)
    link_gap_s: int | None = 3600  # link consecutive baskets of a user this close; None = never
    link_weight: float = 1.0  # total weight of one basket-to-basket link
    max_basket_size: int | None = 100  # distinct items; bigger baskets are subsampled or skipped
    oversize: str = "subsample"  # "subsample" | "skip"
    max_user_lines: int | None = None  # drop users with more purchase lines than this
    user_lines_quantile: float | None = 0.999  # ... or above this quantile of lines per user
    min_edge_weight: float = 0.0  # drop edges whose total weight is below this
    max_user_edge_weight: float | None = 1.0  # one account's most weight on one edge; None = no cap
    min_edge_users: int = 1  # distinct accounts an edge needs
    # "inverse_activity": an account's edges weigh 1 / log2(1 + its baskets), so a heavy account's many
    # orders count for less each (docs/robustness.md measures it; off by default)
    user_weighting: str = "uniform"
    seed: int = 0  # for subsampling oversized baskets

    def validate(self) -> None:
        if self.within_basket not in WITHIN_BASKET_RULES:
            raise ValueError(f"GraphConfig.within_basket must be one of {WITHIN_BASKET_RULES}, got {self.within_basket!r}")
        if self.oversize not in OVERSIZE_POLICIES:
            raise ValueError(f"GraphConfig.oversize must be one of {OVERSIZE_POLICIES}, got {self.oversize!r}")
        if self.max_basket_size is not None and self.max_basket_size < 2:
            raise ValueError(f"GraphConfig.max_basket_size must be >= 2 or None, got {self.max_basket_size}")
        if self.link_gap_s is not None and self.link_gap_s < 0:
            raise ValueError(f"GraphConfig.link_gap_s must be >= 0 or None, got {self.link_gap_s}")
        if not self.link_weight > 0:
            raise ValueError(f"GraphConfig.link_weight must be > 0, got {self.link_weight}")
        if self.max_user_lines is not None and self.max_user_lines < 1:
            raise ValueError(f"GraphConfig.max_user_lines must be >= 1 or None, got {self.max_user_lines}")
        q = self.user_lines_quantile
        if q is not None and not 0.0 < q <= 1.0:
            raise ValueError(f"GraphConfig.user_lines_quantile must be in (0, 1] or None, got {q}")
        if self.max_user_edge_weight is not None and not self.max_user_edge_weight > 0:
            raise ValueError(f"GraphConfig.max_user_edge_weight must be > 0 or None, got {self.max_user_edge_weight}")
        if self.user_weighting not in ("uniform", "inverse_activity"):
            raise ValueError(f"GraphConfig.user_weighting must be 'uniform' or 'inverse_activity', "
                             f"got {self.user_weighting!r}")
        if self.min_edge_users < 1:
            raise ValueError(f"GraphConfig.min_edge_users must be >= 1, got {self.min_edge_users}")
        if self.min_edge_weight < 0:
            raise ValueError(f"GraphConfig.min_edge_weight must be >= 0, got {self.min_edge_weight}")


@dataclass
class ItemGraph:
    """Undirected weighted item graph as a symmetric CSR (both directions stored)."""

    n_items: int
    indptr: np.ndarray  # int64, (n_items + 1,)
    indices: np.ndarray  # int32, neighbours sorted within each row
    weights: np.ndarray  # float32, > 0
    info: dict = field(default_factory=dict)  # build counts (dropped users, skipped baskets, ...)

    @property
    def n_edges(self) -> int:
        """Undirected edges (each stored twice)."""
        return len(self.indices) // 2

    def degree(self) -> np.ndarray:
        """Number of neighbours per item (int64)."""
        return np.diff(self.indptr)

    def strength(self) -> np.ndarray:
        """Total edge weight per item (float64)."""
        return np.add.reduceat(np.append(self.weights.astype(np.float64), 0.0), self.indptr[:-1]) * (self.degree() > 0)

    def neighbors(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.indptr[item], self.indptr[item + 1]
        return self.indices[lo:hi], self.weights[lo:hi]

    def to_scipy(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.weights, self.indices, self.indptr), shape=(self.n_items, self.n_items))

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each undirected edge once: (src, dst, weight) with src < dst."""
        src = np.repeat(np.arange(self.n_items, dtype=np.int32), self.degree())
        upper = src < self.indices
        return src[upper], self.indices[upper], self.weights[upper]

    @classmethod
    def from_edges(cls, n_items: int, src, dst, weight=None, min_edge_weight: float = 0.0,
                   info: dict | None = None) -> "ItemGraph":
        """Symmetric graph from (possibly repeated, one-directional) edges.

        Repeated pairs add up, either direction counts for the same edge,
        self-loops are dropped, and edges lighter than `min_edge_weight` too.
        """
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        weight = np.ones(len(src), np.float64) if weight is None else np.asarray(weight, dtype=np.float64)
        if not (len(src) == len(dst) == len(weight)):
            raise ValueError("src, dst and weight differ in length")
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n_items):
            raise ValueError(f"edge endpoints outside 0..{n_items - 1}")
        if len(weight) and not np.all(weight > 0):
            raise ValueError("edge weights must be > 0")
        keep = src != dst
        # Sum each unordered pair once in the upper triangle, then mirror it.
        lo = np.minimum(src[keep], dst[keep])
        hi = np.maximum(src[keep], dst[keep])
        upper = sp.coo_matrix((weight[keep], (lo, hi)), shape=(n_items, n_items)).tocsr()  # sums duplicates
        mat = (upper + upper.T).tocsr()
        if min_edge_weight > 0:
            mat.data[mat.data < min_edge_weight] = 0.0
        mat.eliminate_zeros()
        mat.sort_indices()
        return cls(
            n_items=n_items,
            indptr=mat.indptr.astype(np.int64),
            indices=mat.indices.astype(np.int32),
            weights=mat.data.astype(np.float32),
            info=dict(info or {}),
        )

    def to_pyg(self):
        """torch_geometric `Data(edge_index, edge_weight, num_nodes)`, both directions."""
        import torch
        from torch_geometric.data import Data
        from torch_geometric.utils import to_undirected

        src = torch.from_numpy(np.repeat(np.arange(self.n_items, dtype=np.int64), self.degree()))
        dst = torch.from_numpy(self.indices.astype(np.int64))
        # Already symmetric: "mean" keeps each weight as is while coalescing.
        edge_index, edge_weight = to_undirected(torch.stack([src, dst]), torch.from_numpy(self.weights.copy()),
                                                num_nodes=self.n_items, reduce="mean")
        return Data(edge_index=edge_index, edge_weight=edge_weight, num_nodes=self.n_items)

    @classmethod
    def from_pyg(cls, data) -> "ItemGraph":
        edge_index = data.edge_index.cpu().numpy()
        weight = data.edge_weight.cpu().numpy() if getattr(data, "edge_weight", None) is not None else None
        n = int(data.num_nodes)
        src, dst = edge_index
        # An undirected Data stores each edge twice; keep one direction so weights are not doubled.
        upper = src < dst
        return cls.from_edges(n, src[upper], dst[upper], None if weight is None else weight[upper])


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(c) for c in counts."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - offsets


def _rows_to_csr(basket_of_row: np.ndarray, n_baskets: int) -> np.ndarray:
    indptr = np.zeros(n_baskets + 1, dtype=np.int64)
    np.cumsum(np.bincount(basket_of_row, minlength=n_baskets), out=indptr[1:])
    return indptr


def _user_line_filter(ds: Dataset, mask: np.ndarray, config: GraphConfig) -> tuple[np.ndarray, int]:
    """Mask without the lines of over-active users, and how many users were dropped."""
    if config.max_user_lines is None and config.user_lines_quantile is None:
        return mask, 0
    user = np.asarray(ds.purchase_user, dtype=np.int64)
    counts = np.bincount(user[mask], minlength=int(user.max()) + 1 if len(user) else 0)
    active = counts[counts > 0]
    if len(active) == 0:
        return mask, 0
    limit = np.inf
    if config.max_user_lines is not None:
        limit = float(config.max_user_lines)
    if config.user_lines_quantile is not None and config.user_lines_quantile < 1.0:
        limit = min(limit, float(np.quantile(active, config.user_lines_quantile)))
    too_active = counts > limit
    return mask & ~too_active[user], int(too_active.sum())


def build_item_graph(ds: Dataset, baskets: np.ndarray, config: GraphConfig = GraphConfig(),
                     purchase_mask: np.ndarray | None = None) -> ItemGraph:
    """Item graph from the purchases of `ds` grouped by `baskets` (see module docstring).

    purchase_mask: bool per purchase line; only those lines are used (e.g. the
    training period).
    """
    config.validate()
    n_lines = ds.n_purchases
    mask = np.ones(n_lines, dtype=bool)
    if purchase_mask is not None:
        purchase_mask = np.asarray(purchase_mask)
        if purchase_mask.dtype != bool or purchase_mask.shape != (n_lines,):
            raise ValueError(f"purchase_mask must be a bool array of shape ({n_lines},), "
                             f"got {purchase_mask.dtype} {purchase_mask.shape}")
        mask &= purchase_mask
    mask, dropped_users = _user_line_filter(ds, mask, config)
    index = basket_index(ds, baskets, line_mask=mask)
    n_baskets = index.n_baskets
    row_basket = np.repeat(np.arange(n_baskets, dtype=np.int64), index.sizes())
    row_item = index.items.astype(np.int64)
    row_time = np.asarray(ds.purchase_time, dtype=np.int64)[index.lines]

    # De-duplicate items within a basket, keeping the first occurrence
    # (a stable sort on one int64 key keeps time order within equal keys).
    key = row_basket * max(ds.n_items, 1) + row_item
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    first = np.ones(len(by_key), dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    keep = np.zeros(len(row_item), dtype=bool)
    keep[by_key[first]] = True
    row_basket, row_item, row_time = row_basket[keep], row_item[keep], row_time[keep]
    sizes = np.bincount(row_basket, minlength=n_baskets)

    # Giant baskets: drop them, or keep a seeded random subset (in time order).
    oversized = 0
    if config.max_basket_size is not None and len(sizes) and sizes.max() > config.max_basket_size:
        too_big = sizes > config.max_basket_size
        oversized = int(too_big.sum())
        if config.oversize == "skip":
            keep = ~too_big[row_basket]
        else:
            rng = np.random.default_rng(config.seed)
            shuffled = np.lexsort((rng.random(len(row_basket)), row_basket))
            starts = np.cumsum(sizes) - sizes
            rank = np.empty(len(row_basket), dtype=np.int64)
            rank[shuffled] = np.arange(len(row_basket)) - starts[row_basket[shuffled]]
            keep = rank < config.max_basket_size
        row_basket, row_item, row_time = row_basket[keep], row_item[keep], row_time[keep]
        sizes = np.bincount(row_basket, minlength=n_baskets)
    indptr = _rows_to_csr(row_basket, n_baskets)
    starts = indptr[:-1]

    # Which rule each basket follows.
    nonempty = sizes > 0
    # "auto" trusts an internal order only when no two items share a timestamp.
    new_time = np.ones(len(row_time), dtype=bool)
    new_time[1:] = (row_basket[1:] != row_basket[:-1]) | (row_time[1:] != row_time[:-1])
    timed = np.bincount(row_basket[new_time], minlength=n_baskets) == sizes
    if config.within_basket == "sequence":
        sequence = np.ones(n_baskets, dtype=bool)
    elif config.within_basket == "clique":
        sequence = np.zeros(n_baskets, dtype=bool)
    else:
        sequence = timed

    src_parts, dst_parts, w_parts, basket_parts = [], [], [], []
    # Sequence baskets: consecutive rows.
    consecutive = np.flatnonzero((row_basket[1:] == row_basket[:-1]) & sequence[row_basket[1:]])
    basket_parts.append(row_basket[consecutive])
    src_parts.append(row_item[consecutive])
    dst_parts.append(row_item[consecutive + 1])
    w_parts.append(np.ones(len(consecutive)))

    # Clique baskets: every pair (i < j), weight 2/n.
    clique_rows = np.flatnonzero(~sequence[row_basket] & (sizes[row_basket] >= 2))
    if len(clique_rows):
        b = row_basket[clique_rows]
        later = (starts[b] + sizes[b]) - clique_rows - 1  # rows after this one in its basket
        a_rows = np.repeat(clique_rows, later)
        b_rows = a_rows + 1 + _ragged_arange(later)
        basket_parts.append(row_basket[a_rows])
        src_parts.append(row_item[a_rows])
        dst_parts.append(row_item[b_rows])
        w_parts.append(np.repeat(2.0 / sizes[b], later))

    # Links between consecutive baskets of a user within link_gap_s.
    n_links = 0
    if config.link_gap_s is not None and nonempty.sum() > 1:
        live = np.flatnonzero(nonempty)
        live = live[np.lexsort((live, index.start_time[live], index.user[live]))]
        prev, nxt = live[:-1], live[1:]
        close = (index.user[prev] == index.user[nxt]) & (index.start_time[nxt] - index.end_time[prev] <= config.link_gap_s)
        prev, nxt = prev[close], nxt[close]
        n_links = len(prev)
        if n_links:
            # every row of `prev` basket x every row of `nxt` basket
            a_rows = np.repeat(np.arange(len(prev)), sizes[prev])
            a_rows = starts[prev][a_rows] + _ragged_arange(sizes[prev])
            fan = sizes[nxt][np.repeat(np.arange(len(prev)), sizes[prev])]
            pair_link = np.repeat(np.repeat(np.arange(len(prev)), sizes[prev]), fan)
            src_rows = np.repeat(a_rows, fan)
            dst_rows = starts[nxt][pair_link] + _ragged_arange(fan)
            basket_parts.append(row_basket[src_rows])
            src_parts.append(row_item[src_rows])
            dst_parts.append(row_item[dst_rows])
            w_parts.append(config.link_weight / (sizes[prev][pair_link] * sizes[nxt][pair_link]).astype(np.float64))

    src, dst, weight = np.concatenate(src_parts), np.concatenate(dst_parts), np.concatenate(w_parts)
    user = index.user[np.concatenate(basket_parts)].astype(np.int64)
    if config.user_weighting == "inverse_activity" and len(user):
        baskets_per_user = np.bincount(index.user[nonempty].astype(np.int64), minlength=int(user.max()) + 1)
        weight = weight / np.log2(1.0 + np.maximum(baskets_per_user[user], 1))
    capped = 0
    if config.max_user_edge_weight is not None or config.min_edge_users > 1:
        src, dst, weight, capped = _per_user_edges(src, dst, weight, user, ds.n_items, config)
    info = {
        "lines_used": int(mask.sum()),
        "users_dropped": dropped_users,
        "baskets": int(nonempty.sum()),
        "baskets_oversized": oversized,
        "baskets_sequence": int((sequence & (sizes >= 2)).sum()),
        "basket_links": n_links,
        "user_edges_capped": capped,
    }
    return ItemGraph.from_edges(ds.n_items, src, dst, weight, min_edge_weight=config.min_edge_weight, info=info)


def _per_user_edges(src, dst, weight, user, n_items: int, config: GraphConfig):
    """Each (account, pair)'s weight summed and capped, and pairs with too few accounts dropped.

    Returns the edges (one row per account and pair) and how many (account, pair) sums the cap cut.
    """
    keep = src != dst
    src, dst, weight, user = src[keep], dst[keep], weight[keep], user[keep]
    key = np.minimum(src, dst).astype(np.int64) * n_items + np.maximum(src, dst)
    order = np.lexsort((user, key))
    key, user, weight = key[order], user[order], weight[order]
    first = np.ones(len(key), bool)
    first[1:] = (key[1:] != key[:-1]) | (user[1:] != user[:-1])
    starts = np.flatnonzero(first)
    summed = np.add.reduceat(weight, starts) if len(starts) else weight[:0]
    key = key[starts]
    capped = 0
    if config.max_user_edge_weight is not None:
        capped = int((summed > config.max_user_edge_weight).sum())
        summed = np.minimum(summed, config.max_user_edge_weight)
    if config.min_edge_users > 1 and len(key):
        new_pair = np.ones(len(key), bool)
        new_pair[1:] = key[1:] != key[:-1]
        pair_id = np.cumsum(new_pair) - 1
        users_per_pair = np.bincount(pair_id)
        enough = users_per_pair[pair_id] >= config.min_edge_users
        key, summed = key[enough], summed[enough]
    return key // n_items, key % n_items, summed, capped
