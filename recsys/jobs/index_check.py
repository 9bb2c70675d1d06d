"""The run checks its own index: downstream Recall@20 through each candidate layout against exact search.

Compression is lossy, and how much it loses depends on the model at hand
(at 1M items an earlier fixed layout lost 47% of warm Recall@20), so the
layout is not chosen by item count alone: each run builds the candidate
layouts of its scale in order of size (`candidate_layouts`), ranks the
validation queries through each (the client's path: `SimilarityIndex.search`
on the coded query side of a warm anchor, on the side-feature vector of a
cold one) and through exact float32 inner products of the same vectors, and
ships the smallest layout that loses at most `max_loss` (relative) of warm
and of cold Recall@20 beyond what query sampling explains (`segment_loss`).
When none does, the most faithful one ships and the promotion gate
(`Gates.max_index_loss`) keeps it a candidate.

The record (`IndexCheck.record`, stored in the manifest as `index_check`):
{"layout", "bytes_per_item", "warm": {"exact", "index", "loss",
"standard_error", "measured_loss", "n_queries"}, "cold": {...}, "loss",
"measured_loss", "max_loss", "candidates": [every layout tried, alike]}.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from recsys.evaluation.protocol import prepare
from recsys.jsonsafe import json_safe
from recsys.serving.index import IndexConfig, SimilarityIndex, build_scorer_indexes, exact_search
from recsys.vectors import Scorer

K = 20

# name -> IndexConfig overrides, smallest first within each scale. Flat: 4-bit fast-scan PQ on the
# candidate side (dims per code), a PQ query side for warm anchors; IVF (from ivf_min_items on): the same
# codes behind inverted lists. What loses is the first stage's pool (Ta-Feng) and the IVF probes (1M), not
# the query side (docs/benchmarks.md, section 6).
FLAT_LAYOUTS = {  # k_factor: the first stage's pool, k * k_factor, re-scored from the decoded codes
    "fs1+pq16": dict(fast_scan_dims=1, query_factory="PQ16", k_factor=10),
    "fs1+pq16-k25": dict(fast_scan_dims=1, query_factory="PQ16", k_factor=25),
    "fs1+pq32-k25": dict(fast_scan_dims=1, query_factory="PQ32", k_factor=25),
}
IVF_LAYOUTS = {  # ivf_min_items=1: IVF lists whatever the size. Probes: at 1M items 16 of 1024 lists lost 7%
    # of warm Recall@20, 64 lost 2% (docs/benchmarks.md)
    "ivf-fs1+pq16": dict(fast_scan_dims=1, query_factory="PQ16", ivf_min_items=1, nprobe=64, k_factor=10),
    "ivf-fs1+pq16-p128": dict(fast_scan_dims=1, query_factory="PQ16", ivf_min_items=1, nprobe=128, k_factor=25),
    "ivf-fs1+pq32-p128": dict(fast_scan_dims=1, query_factory="PQ32", ivf_min_items=1, nprobe=128, k_factor=25),
}
EXTRA_LAYOUTS = {  # measured in bench/index_scale.py, not tried by runs: 200k -6.7% warm, 1M -11% warm
    "fs2+pq16": dict(fast_scan_dims=2, query_factory="PQ16"),
}
NAMED_LAYOUTS = {**FLAT_LAYOUTS, **IVF_LAYOUTS, **EXTRA_LAYOUTS}


@dataclass
class IndexCheckConfig:
    """How the run checks its index (every field JSON-able)."""

    enabled: bool = True  # off: ship PipelineConfig.index as configured, unchecked
    max_loss: float = 0.01  # ship the smallest layout losing at most this share of warm and cold Recall@20
    queries: int = 5000  # validation queries per segment (sampled with the seed)
    layouts: tuple[str, ...] = ()  # names of NAMED_LAYOUTS to try; () = those of the scale
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.max_loss < 1.0:
            raise ValueError(f"IndexCheckConfig.max_loss must be in [0, 1), got {self.max_loss}")
        if int(self.queries) < 1:
            raise ValueError(f"IndexCheckConfig.queries must be >= 1, got {self.queries}")
        unknown = [n for n in self.layouts if n not in NAMED_LAYOUTS]
        if unknown:
            raise ValueError(f"IndexCheckConfig.layouts: unknown {unknown}; known {sorted(NAMED_LAYOUTS)}")


def candidate_layouts(n_items: int, base: IndexConfig | None = None, names: tuple[str, ...] = ()) -> dict[str, IndexConfig]:
    """The layouts a catalogue of n_items tries, smallest first, as full IndexConfigs over `base` (only
    `base` itself when it names a factory)."""
    base = base or IndexConfig()
    if base.factory != "auto":
        return {"configured": base}  # a layout the user set: checked, not replaced
    if names:
        chosen = {n: NAMED_LAYOUTS[n] for n in names}
    elif n_items < base.pq_min_items:
        return {"small": base}  # too few vectors to train PQ: the small factory (SQ8) on both sides
    else:
        chosen = IVF_LAYOUTS if n_items >= base.ivf_min_items else FLAT_LAYOUTS
    return {name: dataclasses.replace(base, factory="auto", **overrides) for name, overrides in chosen.items()}


@dataclass
class CheckQueries:
    """Validation queries in index rows: warm anchors and their targets; cold side-feature vectors and theirs."""

    warm_anchors: np.ndarray  # (qw,) index rows
    warm_basis: np.ndarray  # (qw, dim) side-feature vectors of the warm anchors (the query side's basis)
    warm_indptr: np.ndarray
    warm_targets: np.ndarray  # index rows
    cold_vectors: np.ndarray  # (qc, dim) side-feature (cold-start) vectors of the cold anchors
    cold_indptr: np.ndarray
    cold_targets: np.ndarray

    @classmethod
    def from_item_queries(cls, index_row: np.ndarray, cold_vectors_of_items: np.ndarray,
                          warm: tuple[np.ndarray, np.ndarray, np.ndarray],
                          cold: tuple[np.ndarray, np.ndarray, np.ndarray]) -> "CheckQueries":
        """From evaluation QuerySets' (anchors, indptr, targets) in item positions: targets outside the
        index are dropped (they cannot be returned), warm anchors outside it and queries left without a
        target are dropped."""
        index_row = np.asarray(index_row, np.int64)
        w_anchor, w_indptr, w_targets = _in_rows(index_row, *warm, anchors_indexed=True)
        c_anchor, c_indptr, c_targets = _in_rows(index_row, *cold, anchors_indexed=False)
        side = np.asarray(cold_vectors_of_items, np.float32)
        return cls(index_row[w_anchor], side[w_anchor].reshape(len(w_anchor), -1), w_indptr, w_targets,
                   side[c_anchor].reshape(len(c_anchor), -1), c_indptr, c_targets)


def _in_rows(index_row, anchors, indptr, targets, anchors_indexed: bool):
    anchors, indptr, targets = (np.asarray(a, np.int64) for a in (anchors, indptr, targets))
    keep_anchor, new_targets, counts = [], [], []
    for q, anchor in enumerate(anchors):
        if anchors_indexed and index_row[anchor] < 0:
            continue
        rows = index_row[targets[indptr[q]:indptr[q + 1]]]
        rows = rows[rows >= 0]
        if len(rows):
            keep_anchor.append(anchor)
            new_targets.append(rows)
            counts.append(len(rows))
    out_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out_targets = np.concatenate(new_targets).astype(np.int64) if new_targets else np.zeros(0, np.int64)
    return np.asarray(keep_anchor, np.int64), out_indptr, out_targets


def recall_of(found: np.ndarray, indptr: np.ndarray, targets: np.ndarray, k: int = K) -> np.ndarray:
    """Per query: hits / min(|targets|, k) of the row's first k found ids."""
    hits = np.zeros(len(found))
    for q in range(len(found)):
        t = targets[indptr[q]:indptr[q + 1]]
        hits[q] = np.isin(found[q, :k], t).sum() / min(len(t), k)
    return hits


def _without_anchor(ids: np.ndarray, anchors: np.ndarray, k: int) -> np.ndarray:
    keep = ids != anchors[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1)[:, :k]


def exact_recall(warm_scorer: Scorer, cold_scorer: Scorer, item_vectors, context_vectors, log_pop,
                 queries: CheckQueries, k: int = K) -> dict:
    """Per-query warm and cold Recall@k of exact float32 inner products over the indexed items."""
    out = {}
    if len(queries.warm_anchors):
        candidates = warm_scorer.item_matrix(item_vectors, context_vectors, log_pop)
        _, ids = exact_search(candidates, warm_scorer.query_matrix(item_vectors[queries.warm_anchors]), k + 1)
        out["warm"] = recall_of(_without_anchor(ids, queries.warm_anchors, k), queries.warm_indptr,
                                queries.warm_targets, k)
    if len(queries.cold_vectors):
        candidates = cold_scorer.item_matrix(item_vectors, context_vectors, log_pop)
        _, ids = exact_search(candidates, cold_scorer.query_matrix(queries.cold_vectors), k)
        out["cold"] = recall_of(ids, queries.cold_indptr, queries.cold_targets, k)
    return out


def index_recall(indexes: dict[str, SimilarityIndex], cold_scorer: Scorer, queries: CheckQueries,
                 k: int = K) -> dict:
    """Per-query warm and cold Recall@k through the indexes as the client searches them."""
    out = {}
    warm = indexes["warm"]
    if len(queries.warm_anchors):
        _, ids = warm.search(warm.query_vectors(queries.warm_anchors, basis=queries.warm_basis), k + 1)
        out["warm"] = recall_of(_without_anchor(ids, queries.warm_anchors, k), queries.warm_indptr,
                                queries.warm_targets, k)
    if len(queries.cold_vectors):
        _, ids = indexes.get("cold", warm).search(cold_scorer.query_matrix(queries.cold_vectors), k)
        out["cold"] = recall_of(ids, queries.cold_indptr, queries.cold_targets, k)
    return out


def index_bytes_per_item(indexes: dict[str, SimilarityIndex]) -> float:
    """Serialized bytes of every index file together, per indexed item."""
    n = indexes["warm"].n_items
    return float(sum(index.size_breakdown()["total_bytes"] for index in indexes.values()) / n)


def segment_loss(exact: np.ndarray, found: np.ndarray) -> dict:
    """Recall@20 exact vs index over paired queries: the relative loss, its standard error, and the loss
    sampling cannot explain (`measured_loss` = loss - 2 standard errors, at least 0).

    With few queries (a small shop's handful of cold queries) one hit moves the loss by several percent;
    the choice and the gate read `measured_loss`, so noise alone neither rejects a layout nor blocks a
    version, while at thousands of queries it is within a fraction of a percent of the loss itself.
    """
    mean_exact = float(exact.mean()) if len(exact) else 0.0
    out = {"exact": round(mean_exact, 5), "index": round(float(found.mean()) if len(found) else 0.0, 5),
           "n_queries": int(len(exact))}
    if mean_exact <= 0 or len(exact) < 2:
        return {**out, "loss": 0.0, "standard_error": None, "measured_loss": 0.0}
    diff = exact - found
    loss = float(diff.mean()) / mean_exact
    se = float(diff.std(ddof=1)) / np.sqrt(len(diff)) / mean_exact
    return {**out, "loss": round(loss, 5), "standard_error": round(se, 5),
            "measured_loss": round(max(0.0, loss - 2.0 * se), 5)}


def check_indexes(indexes: dict[str, SimilarityIndex], warm_scorer: Scorer, cold_scorer: Scorer,
                  item_vectors, context_vectors, log_pop, queries: CheckQueries, exact: dict | None = None) -> dict:
    """{"warm": segment_loss, "cold": ..., "loss", "measured_loss"} of one set of indexes (worst segment)."""
    exact = exact if exact is not None else exact_recall(warm_scorer, cold_scorer, item_vectors, context_vectors,
                                                         log_pop, queries)
    found = index_recall(indexes, cold_scorer, queries)
    result = {segment: segment_loss(exact[segment], found[segment]) for segment in exact}
    result["loss"] = max([0.0, *(result[s]["loss"] for s in exact)])
    result["measured_loss"] = max([0.0, *(result[s]["measured_loss"] for s in exact)])
    return result


@dataclass
class IndexCheck:
    """The layout a run ships, its indexes and the record of what was tried."""

    layout: str
    config: IndexConfig
    indexes: dict[str, SimilarityIndex]
    record: dict = field(default_factory=dict)


def choose_layout(item_vectors: np.ndarray, context_vectors: np.ndarray, log_pop: np.ndarray,
                  cold_vectors: Callable[[], np.ndarray], warm_scorer: Scorer, cold_scorer: Scorer,
                  queries: CheckQueries, config: IndexCheckConfig, base: IndexConfig | None = None,
                  log: Callable[[str], None] | None = None, fill_shards=None) -> IndexCheck:
    """Build the scale's candidate layouts smallest first; ship the first within max_loss (else the best).

    fill_shards: where a sharded layout's shards are filled (recsys.serving.shards.FillShards)."""
    config.validate()
    layouts = candidate_layouts(len(item_vectors), base, tuple(config.layouts))
    exact = exact_recall(warm_scorer, cold_scorer, item_vectors, context_vectors, log_pop, queries)
    tried, best = [], None
    for name, layout in layouts.items():
        started = time.perf_counter()
        indexes = build_scorer_indexes(item_vectors, context_vectors, log_pop, cold_vectors, warm_scorer,
                                       cold_scorer, layout, fill_shards=fill_shards)
        result = check_indexes(indexes, warm_scorer, cold_scorer, item_vectors, context_vectors, log_pop,
                               queries, exact)
        entry = {"layout": name, "factory": indexes["warm"].meta["factory_used"],
                 "query_factory": indexes["warm"].meta["query_factory_used"],
                 "bytes_per_item": round(index_bytes_per_item(indexes), 2), **result,
                 "seconds": round(time.perf_counter() - started, 2)}
        tried.append(entry)
        if log:
            found = ", ".join(f"{s} {result[s]['index']:.4f}/{result[s]['exact']:.4f}" for s in exact)
            log(f"index check {name}: {entry['bytes_per_item']} bytes/item, loss {entry['loss']:.2%} ({found})")
        if best is None or entry["measured_loss"] < best[0]["measured_loss"]:
            best = (entry, name, layout, indexes)
        if entry["measured_loss"] <= config.max_loss:
            best = (entry, name, layout, indexes)
            break
    entry, name, layout, indexes = best
    record = {"layout": name, "factory": entry["factory"], "query_factory": entry["query_factory"],
              "bytes_per_item": entry["bytes_per_item"], **{s: entry[s] for s in exact}, "loss": entry["loss"],
              "measured_loss": entry["measured_loss"], "max_loss": config.max_loss,
              "within_max_loss": entry["measured_loss"] <= config.max_loss,
              "n_queries": {"warm": int(len(queries.warm_anchors)), "cold": int(len(queries.cold_vectors))},
              "candidates": tried}
    return IndexCheck(name, layout, indexes, json_safe(record))


def check_model_index(rec, ds, base: IndexConfig, config: IndexCheckConfig, eval_config,
                      log: Callable[[str], None] | None = None, fill_shards=None) -> IndexCheck:
    """The index check of a fitted EGESRecommender trained on `ds`: its candidate items (those seen in
    training walks, what a bundle indexes), the queries of ds's last `eval_config.test_fraction` of
    purchases (the protocol's split, `config.queries` per segment), `choose_layout`."""
    trained = rec.trained
    rows = np.flatnonzero(np.asarray(trained.item_counts) > 0)
    index_row = np.full(ds.n_items, -1, np.int64)
    index_row[rows] = np.arange(len(rows))
    prep = prepare(ds, dataclasses.replace(eval_config, max_queries=config.queries, seed=config.seed,
                                           include_link_prediction=False))
    # side-feature vectors as the bundle computes them (cold queries, and the warm query side's basis)
    side = trained.cold_vectors_from_codes(np.asarray(trained.item_feature_codes))
    queries = CheckQueries.from_item_queries(
        index_row, side,
        (prep.warm_queries.anchors, prep.warm_queries.indptr, prep.warm_queries.targets),
        (prep.cold_queries.anchors, prep.cold_queries.indptr, prep.cold_queries.targets))
    return choose_layout(trained.item_vectors[rows], trained.context_vectors[rows], rec.log_popularity[rows],
                         lambda: side[rows], rec.warm_scorer, rec.cold_scorer, queries, config,
                         base, log, fill_shards)
