"""The offline evaluation protocol of PRODUCT.md ("what `recsys evaluate` measures").

* Chronological split: the last `test_fraction` of purchase lines by time are
  the test period; purchases at the cut timestamp all go to one side.
* Baskets come from `recsys.sessions.make_baskets` on the full history.
* Warm items were bought in training; cold items are in the catalogue and
  first bought in the test period.
* Warm queries: in a test basket with >= 2 warm items, each warm anchor ranks
  the warm items (itself excluded); targets = the basket's other warm items.
  Cold queries: each cold item of a basket ranks the warm items from its side
  features alone; targets = the basket's warm items (skipped when none).
* Metrics per query, averaged: Recall@K = hits / min(|targets|, K),
  HitRate@K, MRR over the full ranking; catalogue coverage@K = share of warm
  items in at least one top-K list.
* Ties break by training popularity (descending), then item id (ascending),
  exactly: candidate columns are laid out in that order and top-K keeps the
  leftmost column among equal scores.
* The paper's link-prediction AUC for methods that embed a graph.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from recsys.jsonsafe import json_safe as _json_safe
from recsys.dataset import Dataset, Watermark


class Recommender(Protocol):
    name: str

    def fit(self, train: Dataset) -> None: ...
    # train = the full catalogue but only training-period purchases

    def score_warm(self, anchors: np.ndarray) -> np.ndarray: ...
    # float32 [len(anchors), n_items], higher = more similar; evaluator masks non-warm items & the anchor

    def score_cold(self, anchors: np.ndarray) -> np.ndarray: ...
    # same shape; anchors are catalogue items with NO training purchases: may use only their
    # side features (category, brand, price, extras), never their id/purchases


@runtime_checkable
class GraphEmbedder(Protocol):
    """Optional: a recommender that can embed an item graph (for link-prediction AUC)."""

    def embed_graph(self, ds: Dataset, graph) -> np.ndarray: ...
    # [n_items, dim] item vectors trained on `graph` (an ItemGraph) and ds's side features


@dataclass
class EvalConfig:
    test_fraction: float = 0.15
    session_gap_s: int = 3600
    ks: tuple[int, ...] = (10, 20, 50)
    max_queries: int = 20000  # per segment (warm, cold); sampled with `seed` when more
    seed: int = 0
    include_link_prediction: bool = True
    link_prediction_max_edges: int = 200_000  # hidden edges scored (sampled when more)
    chunk_bytes: int = 256 << 20  # memory for one chunk of dense score rows

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.session_gap_s < 0:
            raise ValueError(f"session_gap_s must be >= 0, got {self.session_gap_s}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")


# --------------------------------------------------------------------------- split

@dataclass
class ChronologicalSplit:
    train: Dataset  # full catalogue, training-period purchases only
    test_mask: np.ndarray  # bool over the full dataset's purchase lines
    test_starts_at: int  # test lines are exactly those with purchase_time >= this

    @property
    def n_test(self) -> int:
        return int(self.test_mask.sum())


def subset_purchases(ds: Dataset, mask: np.ndarray) -> Dataset:
    """Same catalogue, only the purchase lines where `mask` (order kept)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (ds.n_purchases,):
        raise ValueError(f"mask has shape {mask.shape}, expected ({ds.n_purchases},)")
    times = ds.purchase_time[mask]
    return dataclasses.replace(
        ds,
        purchase_user=ds.purchase_user[mask],
        purchase_item=ds.purchase_item[mask],
        purchase_time=times,
        purchase_order=ds.purchase_order[mask],
        purchase_quantity=ds.purchase_quantity[mask],
        watermark=Watermark(
            max_purchased_at=int(times.max()) if len(times) else None,
            max_item_updated_at=ds.watermark.max_item_updated_at if ds.watermark else None,
            n_items=ds.n_items,
            n_purchases=int(mask.sum()),
        ),
    )


def split_chronological(ds: Dataset, test_fraction: float = 0.15) -> ChronologicalSplit:
    """Last `test_fraction` of purchases by time = test.

    All lines sharing the cut timestamp go to the same side: to the test side
    unless keeping them in training lands closer to the requested fraction
    (or test would swallow everything).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = ds.n_purchases
    if n < 2:
        raise ValueError(f"need at least 2 purchases to split, the dataset has {n}")
    times = np.sort(ds.purchase_time)
    target = test_fraction * n
    cut = times[n - max(1, int(round(target)))]
    n_ties_in = n - int(np.searchsorted(times, cut, "left"))  # test = time >= cut
    n_ties_out = n - int(np.searchsorted(times, cut, "right"))  # test = time > cut
    options = [(abs(n_ties_in - target), 0, n_ties_in), (abs(n_ties_out - target), 1, n_ties_out)]
    options = [o for o in options if 0 < o[2] < n]
    if not options:
        raise ValueError("all purchases share one timestamp: a chronological split is impossible")
    _, ties_out, n_test = min(options)
    starts_at = int(times[n - n_test])
    test_mask = ds.purchase_time >= starts_at
    assert int(test_mask.sum()) == n_test
    return ChronologicalSplit(train=subset_purchases(ds, ~test_mask), test_mask=test_mask,
                              test_starts_at=starts_at)


# --------------------------------------------------------------------------- queries

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


# --------------------------------------------------------------------------- ranking

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

    def to_dict(self) -> dict:
        return {
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
        self.covered = {k: np.zeros(n_columns, dtype=bool) for k in self.ks}

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
        )


def score_queries(score_fn: Callable[[np.ndarray], np.ndarray], queries: QuerySet, columns: np.ndarray,
                  n_items: int, ks: Sequence[int], mask_anchor: bool, chunk_bytes: int = 256 << 20,
                  name: str = "recommender") -> SegmentMetrics:
    """Metrics of one recommender on one query set.

    `columns`: the candidate (warm) items in tie-break order; the ranking is
    over these columns only, with the anchor itself removed when `mask_anchor`.
    """
    return score_query_variants(score_fn, {name: None}, queries, columns, n_items, ks, mask_anchor,
                                chunk_bytes, name)[name]


def score_query_variants(score_fn: Callable[[np.ndarray], np.ndarray],
                         variants: dict[str, Callable[[np.ndarray], np.ndarray] | None], queries: QuerySet,
                         columns: np.ndarray, n_items: int, ks: Sequence[int], mask_anchor: bool,
                         chunk_bytes: int = 256 << 20, name: str = "recommender") -> dict[str, SegmentMetrics]:
    """`score_queries` for several rankings derived from one score matrix, which is computed once.

    variants: name -> a function of the raw (queries, n_items) scores (None =
    the raw scores), e.g. one popularity weight each added to a shared inner
    product: at 1M items the product is most of the cost.
    """
    from recsys.ranking import rank_rows

    started = time.perf_counter()
    accs = {v: _Accumulator(ks, len(columns)) for v in variants}
    col_of_item = np.full(n_items, -1, dtype=np.int64)
    col_of_item[columns] = np.arange(len(columns))
    chunk = max(1, chunk_bytes // max(1, 4 * n_items * 3))
    for lo in range(0, queries.n_queries, chunk):
        hi = min(lo + chunk, queries.n_queries)
        anchors = queries.anchors[lo:hi]
        base = np.asarray(score_fn(anchors))
        if base.shape != (hi - lo, n_items):
            raise ValueError(f"{name} returned scores of shape {base.shape}, expected {(hi - lo, n_items)}")
        anchor_col = col_of_item[anchors] if mask_anchor else np.full(hi - lo, -1, np.int64)
        t_indptr = queries.indptr[lo:hi + 1] - queries.indptr[lo]
        t_rows = np.repeat(np.arange(hi - lo), np.diff(t_indptr))
        t_cols = col_of_item[queries.targets[queries.indptr[lo]:queries.indptr[hi]]]
        for variant, transform in variants.items():
            raw = (base if transform is None else np.asarray(transform(base))).astype(np.float32, copy=False)
            top, rank, nan = rank_rows(raw, columns, anchor_col, t_indptr, t_cols, max(ks))
            if nan:
                raise ValueError(f"{variant} returned NaN scores")
            accs[variant].add_ranked(top, rank, t_rows, t_cols, len(columns))
    seconds = time.perf_counter() - started
    return {v: acc.result(queries.n_available, seconds) for v, acc in accs.items()}


# --------------------------------------------------------------------------- report

@dataclass
class RowResult:
    name: str
    fit_s: float
    warm: SegmentMetrics | None
    cold: SegmentMetrics | None
    link_prediction_auc: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "fit_s": self.fit_s,
            "warm": self.warm.to_dict() if self.warm else None,
            "cold": self.cold.to_dict() if self.cold else None,
            "link_prediction_auc": self.link_prediction_auc,
            "error": self.error,
        }


@dataclass
class EvaluationReport:
    config: EvalConfig
    summary: dict  # split and query counts
    rows: list[RowResult] = field(default_factory=list)

    def row(self, name: str) -> RowResult:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict:
        cfg = dataclasses.asdict(self.config)
        cfg["ks"] = list(self.config.ks)
        return {"config": cfg, "summary": _json_safe(self.summary), "rows": [_json_safe(r.to_dict()) for r in self.rows]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self, k: int = 20) -> str:
        """Plain-text table: warm and cold Recall@k, HitRate@k, MRR, coverage@k, timings."""
        s = self.summary
        head = (f"items {s['n_items']}, purchases {s['n_purchases']} (test {s['n_test_purchases']}), "
                f"warm items {s['n_warm_items']}, cold items {s['n_cold_items']}; "
                f"queries warm {s['n_warm_queries']}/{s['n_warm_queries_available']}, "
                f"cold {s['n_cold_queries']}/{s['n_cold_queries_available']}")
        cols = ["method", f"warm R@{k}", f"HR@{k}", "MRR", f"cov@{k}",
                f"cold R@{k}", f"HR@{k}", "MRR", f"cov@{k}", "AUC", "fit s", "score s"]
        lines = []
        for r in self.rows:
            cells = [r.name]
            for seg in (r.warm, r.cold):
                if seg is None or seg.n_queries == 0 or k not in seg.recall:
                    cells += ["-"] * 4
                else:
                    cells += [f"{seg.recall[k]:.4f}", f"{seg.hit_rate[k]:.4f}", f"{seg.mrr:.4f}",
                              f"{seg.coverage[k]:.3f}"]
            cells.append("-" if r.link_prediction_auc is None else f"{r.link_prediction_auc:.4f}")
            cells.append(f"{r.fit_s:.1f}")
            score_s = sum(seg.score_s for seg in (r.warm, r.cold) if seg is not None)
            cells.append(f"{score_s:.1f}")
            if r.error:
                cells = [r.name, f"failed: {r.error}"]
            lines.append(cells)
        widths = [max(len(c[i]) for c in [cols, *[l for l in lines if len(l) == len(cols)]])
                  for i in range(len(cols))]
        fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [head, fmt(cols), "  ".join("-" * w for w in widths)]
        out += [fmt(c) if len(c) == len(cols) else "  ".join(c) for c in lines]
        return "\n".join(out)


# --------------------------------------------------------------------------- protocol

@dataclass
class PreparedEvaluation:
    """Everything the protocol fixes before any recommender runs (shared by all rows)."""

    split: ChronologicalSplit
    popularity: np.ndarray  # training purchase lines per item
    warm: np.ndarray  # bool per item
    cold: np.ndarray  # bool per item
    columns: np.ndarray  # warm items in tie-break order
    warm_queries: QuerySet
    cold_queries: QuerySet


def prepare(ds: Dataset, config: EvalConfig) -> PreparedEvaluation:
    from recsys.sessions import make_baskets

    config.validate()
    split = split_chronological(ds, config.test_fraction)
    baskets = make_baskets(ds, config.session_gap_s)
    popularity = np.bincount(split.train.purchase_item, minlength=ds.n_items)
    warm = popularity > 0
    bought_in_test = np.bincount(ds.purchase_item[split.test_mask], minlength=ds.n_items) > 0
    cold = bought_in_test & ~warm
    order = tie_break_order(popularity, ds.item_ids)
    columns = order[warm[order]]
    warm_q, cold_q = build_queries(baskets[split.test_mask], ds.purchase_item[split.test_mask],
                                   warm, cold, config.max_queries, config.seed)
    return PreparedEvaluation(split, popularity, warm, cold, columns, warm_q, cold_q)


def _summary(ds: Dataset, prep: PreparedEvaluation) -> dict:
    return {
        "n_items": ds.n_items,
        "n_purchases": ds.n_purchases,
        "n_train_purchases": prep.split.train.n_purchases,
        "n_test_purchases": prep.split.n_test,
        "test_starts_at": prep.split.test_starts_at,
        "n_warm_items": int(prep.warm.sum()),
        "n_cold_items": int(prep.cold.sum()),
        "n_warm_queries": prep.warm_queries.n_queries,
        "n_warm_queries_available": prep.warm_queries.n_available,
        "n_cold_queries": prep.cold_queries.n_queries,
        "n_cold_queries_available": prep.cold_queries.n_available,
    }


def evaluate_recommender(rec: Recommender, ds: Dataset, prep: PreparedEvaluation, config: EvalConfig) -> RowResult:
    name = getattr(rec, "name", type(rec).__name__)
    started = time.perf_counter()
    rec.fit(prep.split.train)
    fit_s = time.perf_counter() - started
    warm = score_queries(rec.score_warm, prep.warm_queries, prep.columns, ds.n_items, config.ks,
                         mask_anchor=True, chunk_bytes=config.chunk_bytes, name=name)
    cold = score_queries(rec.score_cold, prep.cold_queries, prep.columns, ds.n_items, config.ks,
                         mask_anchor=False, chunk_bytes=config.chunk_bytes, name=name)
    return RowResult(name=name, fit_s=fit_s, warm=warm, cold=cold)


def evaluate(ds: Dataset, recommenders: Sequence[Recommender] | None = None,
             config: EvalConfig | None = None, log: Callable[[str], None] | None = None) -> EvaluationReport:
    """Run the protocol for each recommender; one row each, in the given order."""
    config = config or EvalConfig()
    recommenders = list(recommenders) if recommenders is not None else default_recommenders(config)
    names = [getattr(r, "name", type(r).__name__) for r in recommenders]
    if len(set(names)) != len(names):
        raise ValueError(f"recommender names must be unique, got {names}")
    prep = prepare(ds, config)
    report = EvaluationReport(config=config, summary=_summary(ds, prep))
    for rec in recommenders:
        row = evaluate_recommender(rec, ds, prep, config)
        if config.include_link_prediction and isinstance(rec, GraphEmbedder):
            lp_started = time.perf_counter()
            row.link_prediction_auc = link_prediction_auc(
                prep.split.train, lambda g, r=rec: r.embed_graph(prep.split.train, g), seed=config.seed,
                session_gap_s=config.session_gap_s, max_edges=config.link_prediction_max_edges)
            if log:
                log(f"{row.name}: link prediction {time.perf_counter() - lp_started:.1f}s")
        report.rows.append(row)
        if log:
            log(f"{row.name}: fit {row.fit_s:.1f}s, warm R@20 "
                f"{row.warm.recall.get(20, float('nan')):.4f}, cold R@20 {row.cold.recall.get(20, float('nan')):.4f}")
    return report


def baseline_recommenders() -> list[Recommender]:
    from recsys.baselines import (BoughtTogetherRecommender, CategoryPopularityRecommender, ItemCFRecommender,
                                  MatrixFactorizationRecommender, PopularityRecommender)

    return [PopularityRecommender(), CategoryPopularityRecommender(), ItemCFRecommender(),
            BoughtTogetherRecommender(), MatrixFactorizationRecommender()]


def embedding_recommenders(config: EvalConfig | None = None, train_config=None,
                            modes: Sequence[str] = ("bge", "ges", "eges")) -> list[Recommender]:
    """BGE, GES and EGES rows (recsys.train, imported here so this module stands alone)."""
    from recsys.train import EGESRecommender, TrainConfig

    if train_config is None:
        train_config = TrainConfig()
        if config is not None and hasattr(train_config, "seed"):
            train_config = dataclasses.replace(train_config, seed=config.seed)
    return [EGESRecommender(train_config, mode=mode) for mode in modes]


def default_recommenders(config: EvalConfig | None = None, extra: Sequence[Recommender] = ()) -> list[Recommender]:
    """The PRODUCT.md rows: baselines, then BGE, GES, EGES, then `extra` (e.g. EGES after PQ)."""
    return [*baseline_recommenders(), *embedding_recommenders(config), *extra]


# --------------------------------------------------------------------------- link prediction

def auc_from_scores(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC by the rank statistic (Mann-Whitney U); ties count one half."""
    from scipy.stats import rankdata

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
        from recsys.graph import GraphConfig, build_item_graph
        from recsys.sessions import make_baskets

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
