"""The shipped row: EGES (as the compressed index serves it) re-ranked with co-purchases (`recsys/blend.py`).

fit(train) fits the base row if needed, then chooses the blend on the
EGES model's validation tail (the last `validation_fraction` of the
training period, the split the scorer was chosen on; never the test
period):

1. for each candidate half-life of the co-purchase weights (none = plain
   counts; or a share of the training period's span), the co-purchase lists
   of the part before the tail;
2. the blend weights fitted by a conditional logit over each validation
   query's pool (softmax of the blended score over the pool, the query's
   targets as the choices; convex, L-BFGS): warm queries on item
   co-purchases, cold queries on their category's;
3. variants of each fitted warm blend (the embedding's weight scaled down,
   a share of the whole popularity weight taken off), measured on the
   validation pools;
4. the candidate with the best validation Recall@20 among those whose warm
   coverage@20 reaches bought-together counts' on the same queries plus
   `coverage_margin` (no collapse into a popularity list; none does: the
   widest lists); every candidate's numbers are kept in
   `self.choice["candidates"]` (the manifest records them).

The cold blend is the embedding alone unless the fitted one, or one of
the category's baselines written as a blend (`COLD_BASELINES`), ranks the
cold validation queries better beyond noise (`_choose_cold`); with fewer than `min_cold_queries` of
them it is fitted on warm validation anchors answered from their side
features alone (the situation of a new product). Then the co-purchase
lists of the whole training period with the chosen half-life.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numba as nb
import numpy as np
from scipy.optimize import minimize

from recsys.blend import FEATURES, Blend, CoPurchases, rank_outside_pool, served_columns
from recsys.data.cooccurrence import (DAY_S, category_best_sellers, category_partners, copurchase_matrix,
                                      top_partners)
from recsys.data.dataset import Dataset
from recsys.embed.model import item_features
from recsys.embed.trained import TrainedModel
from recsys.evaluation.metrics import score_queries
from recsys.evaluation.protocol import PreparedEvaluation, prepare
from recsys.evaluation.queries import QuerySet
from recsys.evaluation.ranking import _keep_best, top_columns
from recsys.recommenders.compressed import CompressedRecommender
from recsys.recommenders.eges import EGESRecommender
from recsys.vectors import Scorer, log_popularity


@dataclass
class BlendConfig:
    """How the shipped ranking's blend is chosen (the weights themselves are fitted)."""

    top_m: int = 100  # co-purchase partners kept per item (and per category) in the bundle
    pool: int = 100  # embedding candidates re-ranked per query, besides its co-purchase list
    # half-lives of the co-purchase weights tried, as shares of the training period's span (None = no decay)
    half_lives: tuple[float | None, ...] = (None, 0.5, 0.125)
    # shares of the fitted blend's total popularity weight taken off (warm), tried on validation: the logit
    # fits likelihood, and leans on popularity more than coverage allows
    popularity_cuts: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
    # factors on the fitted embedding weight, tried with each cut: the graph's item-specific evidence is
    # what keeps lists apart (bought-together counts' coverage comes from it); at the smallest, the counts
    # order the pool and the embedding breaks their ties and fills in
    embedding_scales: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.03)
    # every n-th place from the query's co-purchase order, tried with each variant (0 = none; recsys/blend.py):
    # coverage by keeping each list's own evidence instead of by weakening the embedding for all of them
    interleaves: tuple[int, ...] = (0, 4, 3, 2)
    # validation queries the blend is fitted and measured on: coverage grows with the number of queries,
    # and faster for item-specific lists, so it is compared on as many queries as the evaluation uses
    validation_queries: int = 20000
    # coverage on validation queries overstates it on later ones by a few percent: the bar is raised as much
    coverage_margin: float = 0.05
    # the blend's features in use (recsys/blend.py; the others weigh 0). The support and popular-partner
    # interactions fitted the validation tail better and the test period worse (Online Retail warm
    # Recall@20 0.1934 with all six, 0.1949 with these four): off by default. A shared brand did not raise
    # validation Recall@20 on any shop (Ta-Feng 0.0771 either way, test 0.0969 against 0.0977; synthetic A
    # 0.4677 against 0.4679): off by default too
    features: tuple[str, ...] = ("embedding", "popularity", "copurchase", "same_category")
    l2: float = 1e-3  # ridge on the weights of the conditional logit
    # co-purchase weights count distinct accounts, not baskets (recsys/data/cooccurrence.py): one account
    # placing many orders cannot make a pair (docs/robustness.md measures what it costs and saves)
    distinct_users: bool = True
    min_cold_queries: int = 100  # fewer real cold validation queries: fit cold weights on simulated ones
    # a cold candidate replaces the embedding alone only when it ranks the cold validation queries better by
    # more than this many standard errors of the paired difference (`_choose_cold`)
    cold_z: float = 2.0
    simulated_cold_queries: int = 3000

    def validate(self) -> None:
        for name in ("top_m", "pool", "min_cold_queries", "simulated_cold_queries", "validation_queries"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BlendConfig.{name} must be >= 1, got {getattr(self, name)}")
        unknown = set(self.features) - set(FEATURES)
        if unknown or "embedding" not in self.features:
            raise ValueError(f"BlendConfig.features must name features of {FEATURES}, with 'embedding'; "
                             f"got {self.features}")
        if not self.interleaves or any(int(n) < 0 or int(n) == 1 for n in self.interleaves):
            raise ValueError(f"BlendConfig.interleaves must be 0 (none) or >= 2, got {self.interleaves}")
        if not self.cold_z >= 0:
            raise ValueError(f"BlendConfig.cold_z must be >= 0, got {self.cold_z}")
        if not self.half_lives or any(h is not None and not 0 < h for h in self.half_lives):
            raise ValueError(f"BlendConfig.half_lives must be shares > 0 or None, got {self.half_lives}")


def _span_days(ds: Dataset) -> float:
    t = ds.purchase_time
    return max(1.0, (int(t.max()) - int(t.min())) / DAY_S) if len(t) else 1.0


def _half_life_days(share: float | None, ds: Dataset) -> float | None:
    return None if share is None else share * _span_days(ds)


def pool_mask(scores: np.ndarray, pool: int, partners: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
    """(q, n) bool: the `pool` best-scored allowed columns of each row (ties to the lower column), plus its
    allowed co-purchase partners (> 0)."""
    allowed = np.ones(scores.shape[1], bool) if allowed is None else allowed
    mask = (partners > 0) & allowed[None, :]
    top = top_columns(scores, allowed, min(pool, scores.shape[1]))
    rows, where = np.nonzero(top >= 0)
    mask[rows, top[rows, where]] = True
    return mask


START = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # the fit starts from the embedding's own ranking
# a new product's baselines as blends of a cold pool (its category's best sellers and co-purchases are in it):
# the category's items by popularity first (category popularity), and the category's co-purchase weights
# (its bought-together counts; popularity breaks their ties); FEATURES order
COLD_BASELINES = {"category popularity": (0.0, 1.0, 0.0, 100.0, 0.0, 0.0, 0.0),
                  "category bought-together": (0.0, 1e-3, 1.0, 0.0, 0.0, 0.0, 0.0)}


class _Segment:
    """Dense blended scores of one segment (warm or cold) from an embedding scorer and co-purchase lists."""

    def __init__(self, embed_fn, lists: CoPurchases, anchor_of, support: np.ndarray, category: np.ndarray,
                 log_pop: np.ndarray, candidates: np.ndarray, blend: Blend, extra_pool: int,
                 members: CoPurchases | None = None, brand: np.ndarray | None = None):
        self.embed_fn, self.lists, self.anchor_of, self.support = embed_fn, lists, anchor_of, support
        self.brand = np.zeros_like(category) if brand is None else brand  # per item, 0 = unknown
        self.category, self.log_pop, self.candidates, self.blend = category, log_pop, candidates, blend
        self.extra_pool = extra_pool  # the anchor itself takes a place in a warm pool
        self.members = members  # more pool members per anchor (a cold query's category's best sellers)

    def features(self, anchors: np.ndarray):
        emb = np.asarray(self.embed_fn(anchors), np.float32)
        co = self.lists.dense(self.anchor_of(anchors))
        co[:, ~self.candidates] = 0.0
        in_pool = pool_mask(emb, self.blend.pool + self.extra_pool, co, self.candidates)
        if self.members is not None:
            in_pool |= self.members.dense(self.anchor_of(anchors)) > 0
        in_pool &= self.candidates[None, :]
        if self.extra_pool:  # a warm query's own item is no answer: out of its pool (as in pool_members)
            in_pool[np.arange(len(anchors)), anchors] = False
        same = (self.category[None, :] == self.category[anchors][:, None]) & (self.category[anchors][:, None] > 0)
        brand = (self.brand[None, :] == self.brand[anchors][:, None]) & (self.brand[anchors][:, None] > 0)
        support = self.support[self.anchor_of(anchors)][:, None]
        return emb, co, same.astype(np.float32), support, in_pool, brand.astype(np.float32)

    def scores(self, anchors: np.ndarray) -> np.ndarray:
        return self.scores_from(self.features(anchors))

    def best_columns(self, anchors: np.ndarray):
        """(dense embedding scores, the `pool` best candidate columns of each row): the dense part of a pool,
        the same for every segment over one embedding scorer and candidate set."""
        emb = np.asarray(self.embed_fn(anchors), np.float32)
        # the same best columns as pool_mask (ties to the lower column)
        return emb, top_columns(emb, self.candidates, min(self.blend.pool + self.extra_pool, emb.shape[1]))

    def pool_members(self, anchors: np.ndarray, mask_anchor: bool, best=None):
        """The pools of `features` as (query row, member) pairs, row-major with members ascending (the order
        of np.nonzero over its dense mask), with each pair's features.

        Only the embedding scores are dense (they pick the `pool` best); co-purchases, shared category and
        the rest are looked up for the members alone: at 1M items the dense pass held about ten
        (queries x items) arrays at once, this one the scores. `best`: `best_columns(anchors)` when
        several segments share it.
        """
        emb, top = self.best_columns(anchors) if best is None else best
        parts = [top]
        keys = self.anchor_of(anchors)
        for lists in (self.lists, self.members):
            if lists is None:
                continue
            listed, weight = lists.padded_with_weights(keys)
            parts.append(np.where(weight > 0, listed, -1))  # a member by a positive weight, as in the dense mask
        cols = np.concatenate(parts, axis=1)
        cols = np.sort(cols, axis=1)
        keep = cols >= 0
        keep[:, 1:] &= cols[:, 1:] != cols[:, :-1]  # each member once
        keep &= self.candidates[np.maximum(cols, 0)]
        if mask_anchor:
            keep &= cols != anchors[:, None]
        rows, where = np.nonzero(keep)
        members = cols[rows, where]
        co = self.lists.lookup(keys[rows], members[:, None])[:, 0]
        same = ((self.category[members] == self.category[anchors[rows]]) & (self.category[anchors[rows]] > 0))
        brand = ((self.brand[members] == self.brand[anchors[rows]]) & (self.brand[anchors[rows]] > 0))
        return (rows, members, emb[rows, members], co, same.astype(np.float32), self.support[keys][rows],
                brand.astype(np.float32))

    def scores_from(self, features, blend: Blend | None = None) -> np.ndarray:
        emb, co, same, support, in_pool, brand = features
        blend = blend or self.blend
        blended = blend.score(emb, self.log_pop[None, :], co, same, support, brand)
        if blend.interleave:
            blended = _interleaved_pools(blended, co, in_pool, blend.interleave)
        return rank_outside_pool(blended, emb, in_pool)


def _interleaved_pools(blended: np.ndarray, co: np.ndarray, in_pool: np.ndarray, every: int) -> np.ndarray:
    """Dense (q, n) blended scores with each row's pool ordered as interleaved (`served_columns`, the
    client's code), as minus the place: the pools are packed into (q, largest pool) rows first, members in
    column order."""
    rows, cols = np.nonzero(in_pool)
    starts = np.searchsorted(rows, np.arange(len(blended)))
    slot = np.arange(len(rows)) - starts[rows]
    width = int(slot.max(initial=-1)) + 1
    packed = [np.zeros((len(blended), width), np.float32) for _ in range(2)]
    valid = np.zeros((len(blended), width), bool)
    for out, values in zip(packed, (blended[rows, cols], co[rows, cols])):
        out[rows, slot] = values
    valid[rows, slot] = True
    order = served_columns(*packed, valid, every, width)
    place = np.empty((len(blended), width), np.float32)
    r, j = np.nonzero(order >= 0)
    place[r, order[r, j]] = j
    out = blended.copy()
    out[rows, cols] = -place[rows, slot]
    return out


def fit_weights(features: list[np.ndarray], groups: np.ndarray, chosen: np.ndarray, l2: float,
                start: tuple[float, ...]) -> tuple[float, ...]:
    """Conditional logit: weights maximising sum_q mean_{t in targets_q} log softmax_pool(s)_t.

    features: one (rows,) array per blend feature over all pool entries, grouped by query
    (`groups` ascending); chosen: weight of each entry as a target (1 / number of targets in its pool).
    """
    x = np.stack(features, axis=1).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    per_group = np.add.reduceat(chosen, starts)
    size = np.diff(np.r_[starts, len(groups)])

    def loss(w):
        s = x @ w
        m = np.maximum.reduceat(s, starts)
        e = np.exp(s - np.repeat(m, size))
        z = np.add.reduceat(e, starts)
        lse = np.log(z) + m
        value = -(chosen @ s) + per_group @ lse + l2 * (w @ w)
        p = e / np.repeat(z, size)
        grad = -(chosen @ x) + (np.repeat(per_group, size) * p) @ x + 2 * l2 * w
        return value, grad

    result = minimize(loss, np.asarray(start, np.float64), jac=True, method="L-BFGS-B")
    return tuple(float(v) for v in result.x)


@dataclass
class PoolEntries:
    """Every validation query's pool, flattened: one entry per (query, pool member), grouped by query."""

    features: np.ndarray  # (entries, len(FEATURES)) float64, in FEATURES order
    groups: np.ndarray  # int64 query of each entry, ascending
    items: np.ndarray  # int64 the member
    target: np.ndarray  # bool: the member is one of its query's targets
    n_targets: np.ndarray  # int64 per query: all its targets (in its pool or not)
    n_columns: int  # candidates the coverage is a share of

    def __post_init__(self) -> None:
        # what every measure needs (the choice measures hundreds of candidates on the same pools)
        self.starts = np.searchsorted(self.groups, np.arange(len(self.n_targets) + 1))
        self.copurchase = np.ascontiguousarray(self.features[:, 2])
        self.n_items = int(self.items.max(initial=-1)) + 1

    def training_rows(self):
        """(features, groups, weight as a choice) of the queries whose pool holds a target."""
        hits = np.bincount(self.groups, weights=self.target, minlength=len(self.n_targets))
        keep = hits[self.groups] > 0
        chosen = np.where(self.target[keep], 1.0 / np.maximum(hits[self.groups[keep]], 1), 0.0)
        return [self.features[keep, j] for j in range(self.features.shape[1])], self.groups[keep], chosen

    def measure(self, blend: Blend, k: int = 20) -> tuple[float, float]:
        """(Recall@k, coverage@k) when each pool is ranked by `blend`: the top k lie in the pool."""
        recalls, coverage = self.per_query(blend, k)
        return (float(recalls.mean()) if len(recalls) else 0.0), coverage

    def per_query(self, blend: Blend, k: int = 20) -> tuple[np.ndarray, float]:
        """(Recall@k of each query with targets, coverage@k): `measure` before the mean, for paired tests."""
        scores = self.features @ np.asarray(blend.weights, np.float64)
        hits, covered = _pool_top_k(self.starts, scores, self.copurchase, int(blend.interleave), int(k),
                                    self.target, self.items, self.n_items)
        has = self.n_targets > 0
        return hits[has] / np.minimum(self.n_targets[has], k), float(covered.sum() / max(self.n_columns, 1))


@nb.njit(inline="always", cache=True)
def _keep_best_partners(buf_w, buf_s, buf_e, n, w, sc, e):
    """`ranking._keep_best` with a second key: keep the best (weight desc, then score desc, then entry
    asc) partners in buffers of which n slots are filled; returns how many are filled now."""
    t = len(buf_w)
    if n == t and (w < buf_w[t - 1] or (w == buf_w[t - 1] and (sc < buf_s[t - 1] or (sc == buf_s[t - 1]
                                                                                       and e > buf_e[t - 1])))):
        return n
    i = n if n < t else t - 1
    while i > 0 and (w > buf_w[i - 1] or (w == buf_w[i - 1] and (sc > buf_s[i - 1] or (sc == buf_s[i - 1]
                                                                                         and e < buf_e[i - 1])))):
        buf_w[i], buf_s[i], buf_e[i] = buf_w[i - 1], buf_s[i - 1], buf_e[i - 1]
        i -= 1
    buf_w[i], buf_s[i], buf_e[i] = w, sc, e
    return n + 1 if n < t else n


@nb.njit(cache=True)
def pool_order(scores, copurchase, every, take):
    """The first `take` of one pool's entries in the order served: by blended score (ties to the lower
    entry) or, with `every` >= 2, interleaved: the blend's j-th best takes place j + j // (every - 1)
    (skipping every `every`-th place), the i-th co-purchase partner (copurchase > 0; by weight, ties in the
    blend's order) place every * (i + 1) - 1, an entry in both orders the earlier; places left empty close
    up. An entry's place in either order bounds its final one from below, so the `take` best of each order
    are all that can be served. The numba twin of `recsys.blend.served_columns` (serving has no numba), for
    the validation's many rankings; a test holds the two equal."""
    m = len(scores)
    t = min(take, m)
    out = np.empty(t, np.int64)
    if t == 0:
        return out
    own_s, own = np.empty(t), np.empty(t, np.int64)
    co_w, co_s, co = np.empty(t), np.empty(t), np.empty(t, np.int64)
    n_own = n_co = 0
    for e in range(m):
        n_own = _keep_best(own_s, own, n_own, scores[e], e)
        if every >= 2 and copurchase[e] > 0:
            n_co = _keep_best_partners(co_w, co_s, co, n_co, copurchase[e], scores[e], e)
    if every < 2:
        return own[:t]
    size = t + t // (every - 1) + every * (n_co + 1)
    slots = np.full(size, -1, np.int64)
    for j in range(n_own):
        slots[j + j // (every - 1)] = own[j]
    for i in range(n_co):
        place = every * (i + 1) - 1
        e = co[i]
        for j in range(n_own):  # already placed earlier by the blend?
            if own[j] == e:
                break
        else:
            j = -1
        if j >= 0 and j + j // (every - 1) < place:
            continue
        if j >= 0:
            slots[j + j // (every - 1)] = -1
        slots[place] = e
    n = 0
    for p in range(size):
        if slots[p] >= 0 and n < t:
            out[n] = slots[p]
            n += 1
    return out[:n]


@nb.njit(cache=True)
def _pool_top_k(starts, scores, copurchase, every, k, target, items, n_items):
    """Per query: hits among the k first of its pool in the order served (`pool_order`), and
    the items listed."""
    n_groups = len(starts) - 1
    hits = np.zeros(n_groups)
    covered = np.zeros(n_items, np.bool_)
    for g in range(n_groups):
        a, b = starts[g], starts[g + 1]
        if b == a:
            continue
        order = pool_order(scores[a:b], copurchase[a:b], every, k)
        h = 0.0
        for j in range(len(order)):
            e = a + order[j]
            if target[e]:
                h += 1.0
            covered[items[e]] = True
        hits[g] = h
    return hits, covered


# memory for one chunk of a pool pass: its dense (queries x items) embedding scores (4 bytes an entry, some
# slack); at 1M items the first version's 512 queries a chunk took over 20 GB
POOL_CHUNK_BYTES = 1 << 30


def pool_entries(segments: list[_Segment], queries: QuerySet, mask_anchor: bool,
                 chunk: int = 512) -> list[PoolEntries]:
    """Each segment's pools of a query set with each member's blend features (`recsys/blend.py`), in one pass.

    The segments differ in their co-purchase lists only (one a half-life): the dense embedding scores and
    their best columns, most of a pass's time at 1M items, are computed once a chunk for all of them.
    """
    first = segments[0]
    if any(s.embed_fn is not first.embed_fn or s.candidates is not first.candidates
           or s.blend.pool + s.extra_pool != first.blend.pool + first.extra_pool for s in segments):
        raise ValueError("pool_entries: segments must share their embedding scorer, candidates and pool size")
    n = first.candidates.size
    chunk = max(1, min(chunk, POOL_CHUNK_BYTES // (8 * max(1, n))))
    feats = [[[] for _ in FEATURES] for _ in segments]
    groups, items, target_of = [[] for _ in segments], [[] for _ in segments], [[] for _ in segments]
    for lo in range(0, queries.n_queries, chunk):
        hi = min(lo + chunk, queries.n_queries)
        anchors = queries.anchors[lo:hi]
        best = first.best_columns(anchors)
        # a member is a target when (row, member) is one of the chunk's (query, target) pairs
        t_rows = np.repeat(np.arange(hi - lo), np.diff(queries.indptr[lo:hi + 1]))
        t_keys = np.unique(t_rows * np.int64(n) + queries.targets[queries.indptr[lo]:queries.indptr[hi]])
        for s, segment in enumerate(segments):
            rows, members, emb, co, same, support, brand = segment.pool_members(anchors, mask_anchor, best)
            pop = segment.log_pop[members]
            for j, values in enumerate((emb, pop, co, same, co * support, pop * (co > 0), brand)):  # FEATURES
                feats[s][j].append(np.asarray(values, np.float64))
            groups[s].append(rows + lo)
            items[s].append(members)
            target_of[s].append(np.isin(rows * np.int64(n) + members, t_keys))
    n_targets = np.diff(queries.indptr).astype(np.int64)
    return [PoolEntries(np.stack([np.concatenate(f) for f in feats[s]], axis=1), np.concatenate(groups[s]),
                        np.concatenate(items[s]), np.concatenate(target_of[s]), n_targets, int(first.candidates.sum()))
            for s in range(len(segments))]


def _variant(blend: Blend, cut: float, scale: float, prior_beta: float, interleave: int = 0) -> Blend:
    """The blend with its embedding weight x `scale`, then `cut` of its whole popularity weight taken off,
    interleaved with the co-purchase order every `interleave`-th place (0: not)."""
    w = blend.weights
    emb = w[0] * scale
    total = max(0.0, emb * prior_beta + w[1])  # the blend's whole weight on log-popularity
    return Blend((emb, w[1] - cut * total, *w[2:]), blend.pool, interleave)


class BlendedRecommender:
    """EGES after compression, re-ranked with co-purchases: the ranking a published version serves."""

    def __init__(self, base: CompressedRecommender, config: BlendConfig | None = None, name: str = "EGES+PQ+graph",
                 session_gap_s: int = 3600):
        self.base = base
        self.config = config or BlendConfig()
        self.config.validate()
        self.name = name
        self.session_gap_s = session_gap_s
        self.choice: dict | None = None  # the chosen blends and half-life, with every candidate's numbers
        self.warm_blend: Blend | None = None
        self.cold_blend: Blend | None = None

    @property
    def eges(self) -> EGESRecommender:
        return self.base.base

    # -- choosing on the validation tail --------------------------------------------
    def choose(self, train: Dataset) -> dict:
        """Fit and pick the blend on the EGES model's validation tail (see the module docstring)."""
        cfg = self.config
        _, part = self.eges.validation_state(train)
        prep = prepare(train, dataclasses.replace(self.eges.validation_config(), max_queries=cfg.validation_queries))
        vtrain = prep.split.train
        log_pop = log_popularity(vtrain.purchase_item, vtrain.n_items)
        warm_items = prep.warm
        category = vtrain.category.codes.astype(np.int64)
        brand = vtrain.brand.codes.astype(np.int64)
        codes = item_features(vtrain, self.eges.config.n_price_tiers).codes[:, :len(part.feature_names)]
        warm_fn, cold_fn = _embedding_scorers(part, self.eges.warm_scorer, self.eges.cold_scorer, log_pop, codes)
        # bought-together counts on the same queries: the coverage bar
        plain = copurchase_matrix(vtrain, self.session_gap_s, None)
        counts_cov = _counts_coverage(plain, prep)
        simulated = _simulated_cold(prep, cfg.simulated_cold_queries, self.eges.config.seed)
        cold_queries = prep.cold_queries if prep.cold_queries.n_queries >= cfg.min_cold_queries else simulated
        warm_segs, cold_segs = [], []
        days_of = [_half_life_days(share, vtrain) for share in cfg.half_lives]
        for days in days_of:
            matrix = (plain if days is None and not cfg.distinct_users else
                      copurchase_matrix(vtrain, self.session_gap_s, days, distinct_users=cfg.distinct_users))
            items, cats = top_partners(matrix, cfg.top_m), category_partners(vtrain, matrix, cfg.top_m)
            warm_segs.append(_Segment(warm_fn, items, lambda a: a, log_pop, category, log_pop, warm_items,
                                      Blend(pool=cfg.pool), 1, brand=brand))
            cold_segs.append(_Segment(cold_fn, cats, lambda a: category[a], category_support(vtrain), category,
                                      log_pop, warm_items, Blend(pool=cfg.pool), 0,
                                      category_best_sellers(vtrain, cfg.top_m, warm_items), brand=brand))
        # one pass over the queries for all half-lives (they share the embedding's part of every pool)
        all_warm_pools = pool_entries(warm_segs, prep.warm_queries, True)
        all_cold_pools = pool_entries(cold_segs, cold_queries, cold_queries is simulated)
        all_real_cold = (all_cold_pools if cold_queries is prep.cold_queries else
                         pool_entries(cold_segs, prep.cold_queries, False) if prep.cold_queries.n_queries else
                         [None] * len(cold_segs))
        candidates, cold_tried = [], []
        for share, days, warm_seg, cold_seg, warm_pools, cold_pools, real_cold in zip(
                cfg.half_lives, days_of, warm_segs, cold_segs, all_warm_pools, all_cold_pools, all_real_cold):
            warm_seg.blend = Blend(self._fit(warm_pools.training_rows()), cfg.pool)
            tried = {"embedding alone": Blend(START, cfg.pool),
                     "fitted": Blend(self._fit(cold_pools.training_rows()), cfg.pool),
                     **{name: Blend(weights, cfg.pool) for name, weights in COLD_BASELINES.items()}}
            chosen, record = _choose_cold(tried, cold_pools, cfg.cold_z)
            cold_seg.blend = tried[chosen]
            cold_tried.append({"half_life_share": share, "chosen": chosen, "candidates": record})
            beta = self.eges.warm_scorer.beta if self.eges.warm_scorer.kind == "inout_prior" else 0.0
            variants = {(cut, scale, every): _variant(warm_seg.blend, cut, scale, beta, every)
                        for every in cfg.interleaves for cut in cfg.popularity_cuts for scale in cfg.embedding_scales}
            # the cold blend measured on the real cold queries (the pools it was chosen on, when those are they)
            cold_r = real_cold.measure(cold_seg.blend)[0] if real_cold is not None else float("nan")
            for (cut, scale, every), blend in variants.items():
                warm_r, warm_cov = warm_pools.measure(blend)
                candidates.append({"half_life_share": share, "half_life_days": days, "popularity_cut": cut,
                                   "embedding_scale": scale, "interleave": every, "warm": blend.to_dict(),
                                   "cold": cold_seg.blend.to_dict(), "warm_recall@20": warm_r,
                                   "warm_coverage@20": warm_cov, "cold_recall@20": cold_r})
        eligible = [c for c in candidates if c["warm_coverage@20"] >= counts_cov * (1 + cfg.coverage_margin)]
        # none reaches the counts' coverage: the widest lists (popularity never takes over)
        best = (max(eligible, key=lambda c: c["warm_recall@20"]) if eligible
                else max(candidates, key=lambda c: c["warm_coverage@20"]))
        return {"half_life_share": best["half_life_share"], "popularity_cut": best["popularity_cut"],
                "embedding_scale": best["embedding_scale"], "interleave": best["interleave"],
                "warm": best["warm"], "cold": best["cold"],
                "candidates": candidates, "cold_candidates": cold_tried, "bought_together_coverage@20": counts_cov,
                "cold_fitted_on": ("cold validation queries" if cold_queries is prep.cold_queries else
                                   "warm validation anchors answered from side features"),
                "n_warm_queries": prep.warm_queries.n_queries, "n_cold_queries": cold_queries.n_queries}

    # -- fitting ---------------------------------------------------------------
    def _fit(self, rows) -> tuple[float, ...]:
        """Weights of the features in use (the others stay 0)."""
        features, groups, chosen = rows
        used = [FEATURES.index(name) for name in self.config.features]
        fitted = fit_weights([features[j] for j in used], groups, chosen, self.config.l2, tuple(START[j] for j in used))
        weights = [0.0] * len(FEATURES)
        for j, w in zip(used, fitted):
            weights[j] = w
        return tuple(weights)

    def fit(self, train: Dataset) -> None:
        if self.base.warm_index is None:
            self.base.fit(train)
        self.prepare(train, self.choose(train))

    def prepare(self, train: Dataset, choice: dict) -> None:
        """The co-purchase lists of `train` for a chosen blend (no validation): scoring needs a fitted base."""
        self.choice = choice
        self.warm_blend = Blend.from_dict(self.choice["warm"])
        self.cold_blend = Blend.from_dict(self.choice["cold"])
        days = _half_life_days(self.choice["half_life_share"], train)
        matrix = copurchase_matrix(train, self.session_gap_s, days, distinct_users=self.config.distinct_users)
        self.item_partners = top_partners(matrix, self.config.top_m)
        self.category_partners = category_partners(train, matrix, self.config.top_m)
        self.log_pop = log_popularity(train.purchase_item, train.n_items)
        self.category = train.category.codes.astype(np.int64)
        self.brand = train.brand.codes.astype(np.int64)
        self.candidates = np.asarray(self.eges.trained.item_counts) > 0  # the items a bundle indexes
        self.category_support = category_support(train)
        self._warm = _Segment(self.base.score_warm, self.item_partners, lambda a: a, self.log_pop, self.category,
                              self.log_pop, self.candidates, self.warm_blend, 1, brand=self.brand)
        self.category_members = category_best_sellers(train, self.config.top_m, self.candidates)
        self._cold = _Segment(self.base.score_cold, self.category_partners, lambda a: self.category[a],
                              self.category_support, self.category, self.log_pop, self.candidates,
                              self.cold_blend, 0, self.category_members, brand=self.brand)

    def _check_fitted(self) -> None:
        if self.warm_blend is None:
            raise ValueError(f"{self.name}: call fit(train) before scoring")

    def score_warm(self, anchors: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._warm.scores(np.asarray(anchors, np.int64))

    def score_cold(self, anchors: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._cold.scores(np.asarray(anchors, np.int64))


def _choose_cold(tried: dict[str, Blend], pools: "PoolEntries", z: float) -> tuple[str, dict]:
    """The cold blend: the embedding alone (the first of `tried`) unless another candidate ranks the same
    cold validation queries better by more than `z` standard errors of the paired per-query difference;
    then the best of those. Cold validation queries are few and new (a few hundred on a small shop):
    candidates within noise of each other would be chosen by it. Returns (name, each one's numbers)."""
    names = list(tried)
    recalls = {name: pools.per_query(blend)[0] for name, blend in tried.items()}
    base = recalls[names[0]]
    record, passing = {}, []
    for name in names:
        diff = recalls[name] - base
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        gain = float(diff.mean()) if len(diff) else 0.0
        record[name] = {"blend": tried[name].to_dict(), "cold_recall@20": float(recalls[name].mean()) if len(diff)
                        else 0.0, "gain_over_embedding": gain, "standard_error": se}
        if name != names[0] and gain > z * se and gain > 0:
            passing.append(name)
    chosen = max(passing, key=lambda n: record[n]["cold_recall@20"]) if passing else names[0]
    return chosen, record


def category_support(ds: Dataset) -> np.ndarray:
    """log(1 + purchase lines of each category's items), per category code (0 = missing: 0)."""
    lines = np.bincount(ds.category.codes[ds.purchase_item].astype(np.int64), minlength=ds.category.cardinality)
    lines[0] = 0
    return np.log1p(lines).astype(np.float32)


def _embedding_scorers(trained: TrainedModel, warm: Scorer, cold: Scorer, log_pop: np.ndarray, codes: np.ndarray):
    warm_items = warm.item_matrix(trained.item_vectors, trained.context_vectors, log_pop)
    cold_items = cold.item_matrix(trained.item_vectors, trained.context_vectors, log_pop)

    def warm_fn(anchors):
        return warm.query_matrix(trained.item_vectors[anchors]) @ warm_items.T

    def cold_fn(anchors):
        return cold.query_matrix(trained.cold_vectors_from_codes(codes[anchors])) @ cold_items.T

    return warm_fn, cold_fn


def _counts_coverage(counts, prep: PreparedEvaluation) -> float:
    """Warm coverage@20 of bought-together counts on the validation queries."""
    counts = counts.tocsr()
    fn = lambda a: np.asarray(counts[a].toarray(), np.float32)  # noqa: E731
    return float(score_queries(fn, prep.warm_queries, prep.columns, counts.shape[0], (20,),
                               mask_anchor=True).coverage[20])


def _simulated_cold(prep: PreparedEvaluation, n: int, seed: int) -> QuerySet:
    """Warm validation queries, to be answered from the anchors' side features (cold-start practice)."""
    q = prep.warm_queries
    if q.n_queries <= n:
        return q
    keep = np.sort(np.random.default_rng(seed + 1).choice(q.n_queries, n, replace=False))
    lengths = np.diff(q.indptr)[keep]
    indptr = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    targets = np.concatenate([q.targets[q.indptr[i]:q.indptr[i + 1]] for i in keep]) if len(keep) else q.targets[:0]
    return QuerySet(anchors=q.anchors[keep], indptr=indptr, targets=targets, n_available=q.n_available)
