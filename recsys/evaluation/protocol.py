"""The offline evaluation protocol ("what `recsys evaluate` measures"; README, "Evaluate and diagnose").

* Chronological split: the last `test_fraction` of purchase lines by time are
  the test period; purchases at the cut timestamp all go to one side.
* Baskets come from `recsys.data.sessions.make_baskets` on the full history.
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

The parts, one file each: `split.py` (the chronological split), `queries.py`
(warm and cold query sets), `metrics.py` and `ranking.py` (scoring a query
set), `report.py` (the table), `link_prediction.py` (the AUC); this module
fixes the protocol (`prepare`) and runs it over recommenders (`evaluate`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from recsys.data.dataset import Dataset
from recsys.data.sessions import make_baskets
from recsys.evaluation.config import EvalConfig
from recsys.evaluation.memory import PeakMemory
from recsys.evaluation.link_prediction import link_prediction_auc
from recsys.evaluation.metrics import score_queries, tie_break_order
from recsys.evaluation.queries import QuerySet, build_queries
from recsys.evaluation.report import EvaluationReport, RowResult
from recsys.evaluation.split import ChronologicalSplit, split_chronological


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


def evaluate_recommender(rec: Recommender, ds: Dataset, prep: PreparedEvaluation, config: EvalConfig,
                         run_ranges=None) -> RowResult:
    """Fit `rec` on the training period and score both segments' queries.

    run_ranges: where the query chunks are scored (recsys.evaluation.metrics.score_query_variants;
    None: in this process).
    """
    name = getattr(rec, "name", type(rec).__name__)
    started = time.perf_counter()
    with PeakMemory() as memory:
        rec.fit(prep.split.train)
    fit_s = time.perf_counter() - started
    warm = score_queries(rec.score_warm, prep.warm_queries, prep.columns, ds.n_items, config.ks,
                         mask_anchor=True, chunk_bytes=config.chunk_bytes, name=name, run_ranges=run_ranges)
    cold = score_queries(rec.score_cold, prep.cold_queries, prep.columns, ds.n_items, config.ks,
                         mask_anchor=False, chunk_bytes=config.chunk_bytes, name=name, run_ranges=run_ranges)
    return RowResult(name=name, fit_s=fit_s, warm=warm, cold=cold, fit_peak_mb=memory.peak_mb)


def evaluate_rows(ds: Dataset, prep: PreparedEvaluation, recommenders: Sequence[Recommender], config: EvalConfig,
                  log: Callable[[str], None] | None = None, run_ranges=None) -> list[RowResult]:
    """Fit and score each recommender on a prepared protocol, in the given order (one RowResult each)."""
    rows = []
    for rec in recommenders:
        row = evaluate_recommender(rec, ds, prep, config, run_ranges)
        if config.include_link_prediction and isinstance(rec, GraphEmbedder):
            lp_started = time.perf_counter()
            row.link_prediction_auc = link_prediction_auc(
                prep.split.train, lambda g, r=rec: r.embed_graph(prep.split.train, g), seed=config.seed,
                session_gap_s=config.session_gap_s, max_edges=config.link_prediction_max_edges)
            if log:
                log(f"{row.name}: link prediction {time.perf_counter() - lp_started:.1f}s")
        rows.append(row)
        if log:
            log(f"{row.name}: fit {row.fit_s:.1f}s, warm R@20 "
                f"{row.warm.recall.get(20, float('nan')):.4f}, cold R@20 {row.cold.recall.get(20, float('nan')):.4f}")
    return rows


def report_of(ds: Dataset, prep: PreparedEvaluation, config: EvalConfig, rows: Sequence[RowResult]) -> EvaluationReport:
    """The evaluation table of rows scored on `prep` (in whatever process or task each was scored)."""
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"recommender names must be unique, got {names}")
    return EvaluationReport(config=config, summary=_summary(ds, prep), rows=list(rows))


def evaluate(ds: Dataset, recommenders: Sequence[Recommender], config: EvalConfig | None = None,
             log: Callable[[str], None] | None = None, run_ranges=None) -> EvaluationReport:
    """Run the protocol for each recommender; one row each, in the given order.

    The rows a user sees (`recsys evaluate`, the nightly flow) are
    `recsys/recommenders/lineup.py`.
    """
    config = config or EvalConfig()
    recommenders = list(recommenders)
    names = [getattr(r, "name", type(r).__name__) for r in recommenders]
    if len(set(names)) != len(names):
        raise ValueError(f"recommender names must be unique, got {names}")
    prep = prepare(ds, config)
    return report_of(ds, prep, config, evaluate_rows(ds, prep, recommenders, config, log, run_ranges))
