"""The shipped ranking: the embedding's candidates re-ranked with the purchase graph's own evidence.

For a query item a and a candidate b the served score is a linear blend

    s(a, b) = w_emb * e(a, b) + w_pop * log(1 + pop_b) + w_co * c(a, b) + w_cat * [cat_a == cat_b]
              + w_sup * c(a, b) * support(a) + w_pc * log(1 + pop_b) * [c(a, b) > 0] + w_br * [brand_a == brand_b]

* e: the EGES scorer's inner product (what the index returns);
* log(1 + pop_b): training purchase lines of b;
* c: log(1 + time-decayed co-purchase weight of a and b), from the top-M
  co-purchases kept per item (`CoPurchases`); for a query known only by its
  side features (cold start) the top-M co-purchases of its category instead;
* [cat_a == cat_b]: a shared category; [brand_a == brand_b] (last in FEATURES, weight w_br): a shared brand;
* support(a): log(1 + purchases of a) (of its category's items, cold): counts
  of a much bought item are firm evidence, those of a rare one noise, so the
  weight of the co-purchase term grows with it;
* log(1 + pop_b) * [c(a, b) > 0]: popularity among the items bought with a
  (a popular partner) weighs differently from popularity alone (a bestseller).

Only a pool is re-ranked: the index's best `pool` candidates plus the
query's co-purchase list; everything else ranks below it.

Interleaving (`Blend.interleave` = n > 0): every n-th place of the list goes
to the query's own co-purchase order (its partners in the pool by co-purchase
weight, ties in the blend's order), the others to the blend's order; an item both
orders would place takes the earlier place (`served_columns`). A linear
blend weighs a rare item's few co-purchases against the embedding's
bestsellers and loses them; the reserved places keep each list's own
evidence in it, which is where bought-together counts' coverage comes from. The weights,
the decay half-life and the pool are chosen on a validation tail of the
training period (`recsys/recommenders/blended.py`) and stored with the
version; evaluation and the client compute the score with this module.
Numpy only: serving imports it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("embedding", "popularity", "copurchase", "same_category", "copurchase_x_support",
            "popularity_x_copurchased", "same_brand")


@dataclass(frozen=True)
class Blend:
    """Weights of one segment's blend (warm queries, or cold ones), in FEATURES order."""

    weights: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # missing trailing ones: 0
    pool: int = 100  # embedding candidates re-ranked per query, besides its co-purchase list
    interleave: int = 0  # every n-th place from the query's co-purchase order (0: none; see the module doc)

    def __post_init__(self) -> None:
        if len(self.weights) > len(FEATURES):
            raise ValueError(f"Blend.weights: at most {len(FEATURES)} ({FEATURES}), got {len(self.weights)}")
        object.__setattr__(self, "weights", tuple(map(float, self.weights)) + (0.0,) * (len(FEATURES) - len(self.weights)))
        if self.interleave < 0 or self.interleave == 1:
            raise ValueError(f"Blend.interleave must be 0 (none) or >= 2, got {self.interleave}")

    def score(self, embedding: np.ndarray, log_pop: np.ndarray, copurchase: np.ndarray,
              same_category: np.ndarray, support: np.ndarray, same_brand: np.ndarray | float = 0.0) -> np.ndarray:
        """Blended scores; `support` is per query, shaped (q, 1) to broadcast over its candidates."""
        w = self.weights
        return (w[0] * embedding + (w[1] + w[5] * (copurchase > 0)) * log_pop + (w[2] + w[4] * support) * copurchase
                + w[3] * same_category + w[6] * same_brand).astype(np.float32)

    @property
    def uses_brand(self) -> bool:
        return self.weights[FEATURES.index("same_brand")] != 0.0

    def to_dict(self) -> dict:
        return {"weights": dict(zip(FEATURES, map(float, self.weights))), "pool": int(self.pool),
                "interleave": int(self.interleave)}

    @classmethod
    def from_dict(cls, spec: dict) -> "Blend":
        weights = spec["weights"]
        return cls(tuple(float(weights.get(name, 0.0)) for name in FEATURES), int(spec.get("pool", cls.pool)),
                   int(spec.get("interleave", 0)))  # bundles before interleaving: none


@dataclass
class CoPurchases:
    """Top-M co-purchases per anchor as CSR: anchor r's partners are items[indptr[r]:indptr[r+1]],
    sorted by partner, with their log(1 + decayed co-purchase weight) in `weight`.

    Anchors are items (warm queries) or category codes (cold queries);
    partners are candidate numbers (item positions in evaluation, index rows
    in a bundle).
    """

    indptr: np.ndarray  # int64 (n_anchors + 1,)
    items: np.ndarray  # int32 (nnz,)
    weight: np.ndarray  # float32 (nnz,)
    n_candidates: int

    def __post_init__(self) -> None:
        self.indptr = np.asarray(self.indptr, np.int64)
        self.items = np.asarray(self.items, np.int32)
        self.weight = np.asarray(self.weight, np.float32)
        anchors = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), np.diff(self.indptr))
        self._keys = anchors * self.n_candidates + self.items  # sorted: anchors ascending, partners within

    @property
    def n_anchors(self) -> int:
        return len(self.indptr) - 1

    def partners(self, anchor: int) -> np.ndarray:
        if not 0 <= anchor < self.n_anchors:
            return np.zeros(0, np.int32)
        return self.items[self.indptr[anchor]:self.indptr[anchor + 1]]

    def lookup(self, anchors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """(q, m) weights of candidates[q, j] for anchors[q]; 0 where not a listed partner (or -1 padding)."""
        anchors = np.asarray(anchors, np.int64)
        candidates = np.asarray(candidates, np.int64)
        out = np.zeros(candidates.shape, np.float32)
        if len(self._keys) == 0:
            return out
        ok = (candidates >= 0) & (anchors[:, None] >= 0) & (anchors[:, None] < self.n_anchors)
        keys = anchors[:, None] * self.n_candidates + np.maximum(candidates, 0)
        where = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        found = ok & (self._keys[where] == keys)
        out[found] = self.weight[where[found]]
        return out

    def dense(self, anchors: np.ndarray) -> np.ndarray:
        """(len(anchors), n_candidates) weights (evaluation scores every candidate)."""
        anchors = np.asarray(anchors, np.int64)
        out = np.zeros((len(anchors), self.n_candidates), np.float32)
        for i, a in enumerate(anchors.tolist()):
            if 0 <= a < self.n_anchors:
                lo, hi = self.indptr[a], self.indptr[a + 1]
                out[i, self.items[lo:hi]] = self.weight[lo:hi]
        return out

    def padded(self, anchors: np.ndarray) -> np.ndarray:
        """(len(anchors), max list length) partners of each anchor, -1 padded."""
        return self.padded_with_weights(anchors)[0]

    def padded_with_weights(self, anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`padded` and each partner's weight beside it (0 in the padding)."""
        anchors = np.asarray(anchors, np.int64)
        valid = (anchors >= 0) & (anchors < self.n_anchors)
        safe = np.where(valid, anchors, 0)
        lengths = np.where(valid, self.indptr[safe + 1] - self.indptr[safe], 0)
        width = int(lengths.max(initial=0))
        out = np.full((len(anchors), width), -1, np.int64)
        weight = np.zeros((len(anchors), width), np.float32)
        if width:
            cols = np.arange(width)
            take = cols[None, :] < lengths[:, None]
            idx = (self.indptr[safe][:, None] + cols[None, :])[take]
            out[take], weight[take] = self.items[idx], self.weight[idx]
        return out, weight

    def remap(self, new_number: np.ndarray, n_candidates: int) -> "CoPurchases":
        """The same lists with partners renumbered (new_number[p], -1 = drop), e.g. positions -> index rows."""
        mapped = np.asarray(new_number, np.int64)[self.items]
        keep = mapped >= 0
        anchors = np.repeat(np.arange(self.n_anchors), np.diff(self.indptr))[keep]
        items, weight = mapped[keep], self.weight[keep]
        order = np.lexsort((items, anchors))
        indptr = np.zeros(self.n_anchors + 1, np.int64)
        np.cumsum(np.bincount(anchors, minlength=self.n_anchors), out=indptr[1:])
        return CoPurchases(indptr, items[order], weight[order], n_candidates)

    def with_added(self, anchors: np.ndarray, partners: np.ndarray, counts: np.ndarray, n_anchors: int,
                   n_candidates: int, top_m: int) -> "CoPurchases":
        """The lists with new co-purchases added (weights add up before the log), each cut to its top_m.

        anchors / partners / counts: one entry per new (anchor, partner) pair;
        n_anchors / n_candidates may grow (a patch's new items); the cut is `top`'s.
        """
        old_anchor = np.repeat(np.arange(self.n_anchors, dtype=np.int64), np.diff(self.indptr))
        anchor = np.concatenate([old_anchor, np.asarray(anchors, np.int64)])
        item = np.concatenate([self.items.astype(np.int64), np.asarray(partners, np.int64)])
        amount = np.concatenate([np.expm1(self.weight.astype(np.float64)), np.asarray(counts, np.float64)])
        if len(anchor) and (anchor.max() >= n_anchors or item.max() >= n_candidates or min(anchor.min(), item.min()) < 0):
            raise ValueError("co-purchases outside the anchors or candidates given")
        key = anchor * n_candidates + item
        unique, inverse = np.unique(key, return_inverse=True)
        total = np.bincount(inverse, weights=amount)
        return CoPurchases.top(unique // n_candidates, unique % n_candidates, total, n_anchors, n_candidates, top_m)

    @classmethod
    def top(cls, anchor: np.ndarray, item: np.ndarray, weight: np.ndarray, n_anchors: int, n_candidates: int,
            top_m: int) -> "CoPurchases":
        """Each anchor's `top_m` heaviest partners (ties: lower partner first), as log(1 + weight) lists.

        anchor / item / weight: one entry per (anchor, partner), sorted by (anchor, partner).
        """
        anchor = np.asarray(anchor, np.int64)
        order = np.lexsort((item, -weight, anchor))  # per anchor: heaviest first, then the lower partner
        starts = np.searchsorted(anchor[order], np.arange(n_anchors))
        rank = np.arange(len(order)) - starts[anchor[order]]
        keep = np.sort(order[rank < top_m])  # back in (anchor, partner) order
        indptr = np.zeros(n_anchors + 1, np.int64)
        np.cumsum(np.bincount(anchor[keep], minlength=n_anchors), out=indptr[1:])
        return cls(indptr, np.asarray(item)[keep], np.log1p(np.asarray(weight, np.float64)[keep]), n_candidates)

    @property
    def nbytes(self) -> int:
        return int(self.indptr.nbytes + self.items.nbytes + self.weight.nbytes)


def merge_candidates(unweighted: np.ndarray, partners: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's candidates once, ascending (-1 where a duplicate or padding was), and their co-purchase
    weight: `weight` for those in `partners` (`CoPurchases.padded_with_weights`), 0 for the others.

    The weights come with the sort (a partner carries its column in the key's low bits and outlasts an
    unweighted copy of itself), so the lists need no search per candidate.
    """
    unweighted, partners = np.asarray(unweighted, np.int64), np.asarray(partners, np.int64)
    shift = max(1, (partners.shape[1] + 1).bit_length())
    columns = np.arange(1, partners.shape[1] + 1, dtype=np.int64)
    keys = np.concatenate([np.where(unweighted >= 0, unweighted << shift, -1),
                           np.where(partners >= 0, (partners << shift) | columns, -1)], axis=1)
    keys.sort(axis=1)
    candidates = keys >> shift  # -1 stays -1
    candidates[:, :-1][candidates[:, :-1] == candidates[:, 1:]] = -1  # the last copy has the partner column
    column = np.where(candidates >= 0, keys & ((1 << shift) - 1), 0)
    listed = column > 0
    copurchase = np.zeros(candidates.shape, np.float32)
    if listed.any():
        rows = np.broadcast_to(np.arange(len(keys))[:, None], keys.shape)
        copurchase[listed] = np.asarray(weight, np.float32)[rows[listed], column[listed] - 1]
    return candidates, copurchase


def _descending_bits(values: np.ndarray) -> np.ndarray:
    """Non-negative float32 values as int64 keys in the reverse order (larger first), exactly."""
    bits = (np.asarray(values, np.float32) + np.float32(0.0)).view(np.uint32).astype(np.int64)
    return (1 << 31) - bits  # a non-negative float's bits grow with it


def _blend_keys(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """int64 keys ascending in the blend's order: higher score first, ties to the lower column, invalid last."""
    q, m = scores.shape
    bits = (np.asarray(scores, np.float32) + np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 is 0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # a float's bits made to grow with it, negatives too
    shift = max(1, m.bit_length())
    descending = np.where(valid, np.int64(1 << 31) - ordered, np.int64((1 << 32) + 1))  # in 1..2^32; invalid after
    return (descending << shift) | np.arange(m, dtype=np.int64)  # distinct: a stable sort's order


def served_columns(scores: np.ndarray, copurchase: np.ndarray, valid: np.ndarray, every: int,
                   take: int) -> np.ndarray:
    """(q, take) the columns of each row's valid entries in the order served, -1 padded.

    By blended score, ties to the lower column; with `every` >= 2 interleaved: the blend's j-th best takes
    place j + j // (every - 1) (skipping every `every`-th place), the i-th co-purchase partner
    (copurchase > 0; by weight, ties in the blend's order) place every * (i + 1) - 1, an entry in both
    orders the earlier; places left empty close up. An entry's place in either order bounds its final one
    from below, so only the `take` best of each order are placed. (The validation's numba twin,
    `recsys.recommenders.blended.pool_order`, is held equal to this by a test.)
    """
    q, m = scores.shape
    t = min(int(take), m)
    rows = np.arange(q)[:, None]
    if q >= 32:  # a batch: integer keys sort faster than a stable float sort (a few rows: not worth the key)
        key = _blend_keys(scores, valid)
        if every < 2 or t == 0:  # the blend's order alone: only its first t are needed
            own = np.argpartition(key, t - 1, axis=1)[:, :t] if 0 < t < m else np.broadcast_to(np.arange(t), (q, t))
            own = np.take_along_axis(own, np.argsort(np.take_along_axis(key, own, 1), axis=1), 1)
            return _padded(np.where(valid[rows, own], own, -1), take)
        full = np.argsort(key, axis=1)
    else:
        full = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    own = full[:, :t]
    own_ok = valid[rows, own]
    if every < 2 or t == 0:
        return _padded(np.where(own_ok, own, -1), take)
    rank = np.empty((q, m), np.int64)
    rank[rows, full] = np.arange(m)
    co = np.broadcast_to(copurchase, (q, m))
    partner = valid & (co > 0)
    shift = max(1, m.bit_length())
    key = np.where(partner, (_descending_bits(np.where(partner, co, 0)) << shift) | rank, np.iinfo(np.int64).max)
    best = np.argpartition(key, t - 1, axis=1)[:, :t] if t < m else np.broadcast_to(np.arange(m), (q, m))
    best = np.take_along_axis(best, np.argsort(np.take_along_axis(key, best, 1), axis=1), 1)  # keys distinct
    co_ok = partner[rows, best]
    never = np.int64(1) << 40
    own_place = np.where(own_ok, np.arange(t) + np.arange(t) // (every - 1), never)
    co_place = np.where(co_ok, every * (np.arange(t) + 1) - 1, never)
    # an entry in both orders keeps the earlier place, and is listed once (with the blend's entries)
    in_own = rank[rows, best] < t
    at = np.minimum(rank[rows, best], t - 1)
    lowered = np.where(in_own, np.minimum(own_place[rows, at], co_place), never)
    np.minimum.at(own_place, (np.broadcast_to(rows, best.shape)[in_own], at[in_own]), lowered[in_own])
    entries = np.concatenate([own, best], axis=1)
    places = np.concatenate([own_place, np.where(in_own, never, co_place)], axis=1)
    served = np.argsort(places, axis=1)[:, :t]  # places distinct but for `never`, which stays out
    return _padded(np.where(places[rows, served] < never, entries[rows, served], -1), take)


def _padded(columns: np.ndarray, take: int) -> np.ndarray:
    if columns.shape[1] == take:
        return columns
    return np.concatenate([columns, np.full((len(columns), take - columns.shape[1]), -1, np.int64)], axis=1)


OUTSIDE_GAP = 1000.0  # below the pool by more than any popularity term of a blend: pool members stay first


def rank_outside_pool(blended: np.ndarray, embedding: np.ndarray, in_pool: np.ndarray) -> np.ndarray:
    """Dense scores where every pool member ranks above every other item, the rest by embedding score."""
    low = np.where(in_pool, blended, np.inf).min(axis=1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0.0)
    top = np.where(in_pool, -np.inf, embedding).max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.where(in_pool, blended, low - OUTSIDE_GAP - (top - embedding)).astype(np.float32)
