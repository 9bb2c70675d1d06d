"""Baskets: which purchase lines were bought together.

A basket is an order (`purchase_order >= 0`) or, for lines without an order,
a per-user session: the user's order-less lines in time order, cut wherever
two consecutive ones are more than `session_gap_s` apart. Lines of one user
with the same timestamp are therefore always in one session (a gap of 0
never cuts). Orders win over the same-timestamp rule: two orders placed in
the same second stay two baskets, as the shop recorded them.

Everything is vectorised numpy over the whole purchase table, so it runs in
well under a second on 10^6 lines, and it works on any slice of users (the
arrays it returns are plain and can be split by basket range).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.dataset import Dataset

DEFAULT_SESSION_GAP_S = 3600


def _user_time_order(user: np.ndarray, time: np.ndarray) -> np.ndarray | None:
    """Permutation sorting lines by (user, time, line), or None if already sorted."""
    if len(user) < 2:
        return None
    du = np.diff(user)
    sorted_already = bool(np.all((du > 0) | ((du == 0) & (np.diff(time) >= 0))))
    return None if sorted_already else np.lexsort((np.arange(len(user)), time, user))


def make_baskets(ds: Dataset, session_gap_s: int = DEFAULT_SESSION_GAP_S) -> np.ndarray:
    """Basket id (int64, dense 0..n_baskets-1) for every purchase line of `ds`.

    Ids are numbered by each basket's first line in (user, time) order, so a
    user's baskets have increasing ids in time order.
    """
    if session_gap_s < 0:
        raise ValueError(f"session_gap_s must be >= 0, got {session_gap_s}")
    user = np.asarray(ds.purchase_user, dtype=np.int64)
    time = np.asarray(ds.purchase_time, dtype=np.int64)
    order = np.asarray(ds.purchase_order, dtype=np.int64)
    n = len(user)
    if len(time) != n or len(order) != n:
        raise ValueError("purchase_user, purchase_time and purchase_order differ in length")
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    # Work in (user, time) order; the Dataset normally is sorted already.
    perm = _user_time_order(user, time)
    if perm is not None:
        user, time, order = user[perm], time[perm], order[perm]
    position = np.arange(n, dtype=np.int64)
    group_of_line = np.empty(n, dtype=np.int64)

    # Sessions: consecutive order-less lines, cut at a user change or a long gap.
    free = np.flatnonzero(order < 0)
    n_sessions = 0
    first_pos_parts = []
    if len(free):
        fu, ft = user[free], time[free]
        starts = np.ones(len(free), dtype=bool)
        starts[1:] = (fu[1:] != fu[:-1]) | (ft[1:] - ft[:-1] > session_gap_s)
        session = np.cumsum(starts) - 1
        group_of_line[free] = session
        n_sessions = int(session[-1]) + 1
        first_pos_parts.append(free[starts])

    # Orders: one basket per (user, order); keyed by user too so a basket
    # never spans two users even if an order id were shared.
    ordered = np.flatnonzero(order >= 0)
    if len(ordered):
        ou, oo = user[ordered], order[ordered]
        by_key = np.lexsort((position[ordered], oo, ou))
        ku, ko = ou[by_key], oo[by_key]
        new_key = np.ones(len(by_key), dtype=bool)
        new_key[1:] = (ku[1:] != ku[:-1]) | (ko[1:] != ko[:-1])
        key_id = np.cumsum(new_key) - 1
        group_of_line[ordered[by_key]] = n_sessions + key_id
        # position is the last sort key, so each group's first row is its first line
        first_pos_parts.append(ordered[by_key][new_key])

    # Renumber groups by their first line so ids follow (user, time).
    first_pos = np.concatenate(first_pos_parts)
    rank = np.empty(len(first_pos), dtype=np.int64)
    rank[np.argsort(first_pos, kind="stable")] = np.arange(len(first_pos), dtype=np.int64)
    basket = rank[group_of_line]
    if perm is not None:
        out = np.empty(n, dtype=np.int64)
        out[perm] = basket
        return out
    return basket


@dataclass
class BasketIndex:
    """Baskets as CSR: lines of basket b are `lines[indptr[b]:indptr[b+1]]`.

    Lines within a basket are sorted by time, then by original line order.
    `items` is `ds.purchase_item[lines]`; `user`, `start_time`, `end_time`
    and `n_times` (distinct timestamps, 1 = no internal order) are per basket.
    """

    indptr: np.ndarray  # int64, (n_baskets + 1,)
    lines: np.ndarray  # int64, (n_lines,)
    items: np.ndarray  # int32, (n_lines,)
    user: np.ndarray  # int64, (n_baskets,)
    start_time: np.ndarray  # int64, (n_baskets,)
    end_time: np.ndarray  # int64, (n_baskets,)
    n_times: np.ndarray  # int64, (n_baskets,)

    @property
    def n_baskets(self) -> int:
        return len(self.indptr) - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def basket_items(self, b: int) -> np.ndarray:
        return self.items[self.indptr[b]:self.indptr[b + 1]]


def basket_index(ds: Dataset, baskets: np.ndarray, line_mask: np.ndarray | None = None) -> BasketIndex:
    """Group purchase lines by basket id (optionally only lines where `line_mask`).

    Basket ids keep their numbering; baskets with no selected line are empty.
    """
    baskets = np.asarray(baskets)
    n = ds.n_purchases
    if baskets.shape != (n,):
        raise ValueError(f"baskets has shape {baskets.shape}, expected ({n},) (one id per purchase line)")
    if n and baskets.min() < 0:
        raise ValueError("baskets contains negative ids")
    n_baskets = int(baskets.max()) + 1 if n else 0
    lines = np.arange(n, dtype=np.int64)
    if line_mask is not None:
        line_mask = np.asarray(line_mask, dtype=bool)
        if line_mask.shape != (n,):
            raise ValueError(f"line_mask has shape {line_mask.shape}, expected ({n},)")
        lines = lines[line_mask]
    b = baskets[lines]
    time = np.asarray(ds.purchase_time, dtype=np.int64)[lines]
    sort = np.lexsort((lines, time, b))
    lines, b, time = lines[sort], b[sort], time[sort]
    counts = np.bincount(b, minlength=n_baskets)
    indptr = np.zeros(n_baskets + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])

    user = np.full(n_baskets, -1, dtype=np.int64)
    start = np.zeros(n_baskets, dtype=np.int64)
    end = np.zeros(n_baskets, dtype=np.int64)
    nonempty = counts > 0
    first, last = indptr[:-1][nonempty], indptr[1:][nonempty] - 1
    user[nonempty] = np.asarray(ds.purchase_user, dtype=np.int64)[lines[first]]
    start[nonempty] = time[first]
    end[nonempty] = time[last]
    new_time = np.ones(len(lines), dtype=bool)
    new_time[1:] = (b[1:] != b[:-1]) | (time[1:] != time[:-1])
    n_times = np.bincount(b[new_time], minlength=n_baskets).astype(np.int64)
    return BasketIndex(
        indptr=indptr,
        lines=lines,
        items=np.asarray(ds.purchase_item, dtype=np.int32)[lines],
        user=user,
        start_time=start,
        end_time=end,
        n_times=n_times,
    )
