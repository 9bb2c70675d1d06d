"""The train-and-publish pipeline as plain functions; flows/ orchestrates them with Prefect.

    extract -> evaluate (chronological split: baselines, EGES, EGES after PQ)
            -> train the shipped model on all data -> compress -> publish -> promote

Each stage takes and returns arrays or small objects, so it can run in a Prefect
task, a test, or a notebook alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np

from recsys.dataset import Dataset

SHIPPED_ROW = "EGES+PQ"
DEFAULT_EVAL_ROWS = ("popularity", "category popularity", "bought-together counts", "item-CF (cosine)",
                     "matrix factorisation", "EGES", SHIPPED_ROW)
ALL_EVAL_ROWS = ("popularity", "category popularity", "bought-together counts", "item-CF (cosine)",
                 "matrix factorisation", "BGE", "GES", "EGES", SHIPPED_ROW)


@dataclass
class PipelineConfig:
    """Everything that decides what a run produces (the cache key hashes it)."""

    train: dict = field(default_factory=dict)  # recsys.train.TrainConfig fields to override
    index: dict = field(default_factory=dict)  # recsys.index.IndexConfig fields to override
    test_fraction: float = 0.15
    session_gap_s: int = 3600
    max_queries: int = 5000
    eval_rows: tuple[str, ...] = DEFAULT_EVAL_ROWS
    link_prediction: bool = False
    seed: int = 0

    def train_config(self):
        from recsys.train import TrainConfig

        return dataclasses.replace(TrainConfig(), **{"seed": self.seed, **self.train})

    def index_config(self):
        from recsys.index import IndexConfig

        return dataclasses.replace(IndexConfig(), **self.index)

    def eval_config(self):
        from recsys.evaluate import EvalConfig

        return EvalConfig(test_fraction=self.test_fraction, session_gap_s=self.session_gap_s,
                          max_queries=self.max_queries, seed=self.seed, include_link_prediction=self.link_prediction)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def fingerprint(ds: Dataset, config: PipelineConfig) -> str:
    """Identifies (data, config): an unchanged pair needs no new training."""
    payload = {"watermark": ds.watermark.as_dict() if ds.watermark else None, "config": config.as_dict(),
               "train_config": dataclasses.asdict(config.train_config()),
               "index_config": dataclasses.asdict(config.index_config())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluation_rows(config: PipelineConfig):
    """The recommenders of the evaluation table, by name, in PRODUCT.md order."""
    from recsys.evaluate import baseline_recommenders
    from recsys.index import CompressedRecommender
    from recsys.train import EGESRecommender

    train_config = config.train_config()
    rows = {r.name: r for r in baseline_recommenders()}
    for mode in ("bge", "ges"):
        rows[mode.upper()] = EGESRecommender(dataclasses.replace(train_config, mode=mode), name=mode.upper())
    eges = EGESRecommender(dataclasses.replace(train_config, mode="eges"), name="EGES")
    rows["EGES"] = eges
    # the shipped index reuses the EGES fit above: same model, compressed
    rows[SHIPPED_ROW] = CompressedRecommender(eges, config.index_config(), name=SHIPPED_ROW)
    unknown = [name for name in config.eval_rows if name not in rows]
    if unknown:
        raise ValueError(f"unknown evaluation rows {unknown}; known: {list(rows)}")
    chosen = [rows[name] for name in config.eval_rows]
    if SHIPPED_ROW in config.eval_rows and "EGES" not in config.eval_rows:
        chosen.insert(chosen.index(rows[SHIPPED_ROW]), eges)
    return chosen


def run_evaluation(ds: Dataset, config: PipelineConfig, log=print):
    """The offline protocol on `ds`; returns (report, the fitted EGES recommender of the split)."""
    from recsys.evaluate import evaluate

    rows = evaluation_rows(config)
    report = evaluate(ds, rows, config.eval_config(), log=log)
    eges = next((r for r in rows if getattr(r, "name", "") == "EGES"), None)
    return report, eges


def train_final(ds: Dataset, config: PipelineConfig, chosen_from=None, progress: bool = True):
    """Train the shipped model on all purchases.

    When the evaluation already chose the scorers on its validation split,
    reuse that choice (one training instead of two).
    """
    from recsys.train import EGESRecommender

    train_config = dataclasses.replace(config.train_config(), mode="eges")
    rec = EGESRecommender(train_config, name="EGES", session_gap_s=config.session_gap_s, progress=progress)
    if chosen_from is not None and getattr(chosen_from, "warm_scorer", None) is not None:
        rec.fit_with_scorers(ds, chosen_from.warm_scorer, chosen_from.cold_scorer)
    else:
        rec.fit(ds)
    return rec


def shipped_metrics(report) -> dict:
    """Metrics stored with a version: the shipped row at the top level (what the gates read), all rows beside."""
    table = report.to_dict()
    rows = {row["name"]: row for row in table.get("rows", [])}
    shipped = rows.get(SHIPPED_ROW) or rows.get("EGES") or {}
    return {**shipped, "rows": rows, "summary": table.get("summary", {}), "config": table.get("config", {})}


def build_parts(rec, ds: Dataset, config: PipelineConfig, metrics: dict, extra_notes: dict | None = None):
    from recsys.bundle import parts_from_recommender

    parts = parts_from_recommender(rec, ds, index_config=config.index_config(), metrics=metrics,
                                   watermark=ds.watermark.as_dict() if ds.watermark else {})
    parts.notes.update(extra_notes or {})
    parts.extra_files.update(training_plots(rec.trained))
    return parts


def training_plots(trained) -> dict[str, bytes]:
    """The loss curve and the mean attention weight per component, as SVG files for the bundle."""
    from recsys.plots import bar_chart_svg, line_chart_svg

    weights = trained.attention_weights()
    seen = np.asarray(trained.item_counts) > 0
    mean = weights[seen].mean(axis=0) if seen.any() else weights.mean(axis=0)
    labels = ["item id", *trained.feature_names]
    return {
        "plots/loss_curve.svg": line_chart_svg(trained.loss_history, "EGES training loss (skip-gram, per pair)",
                                               "training step", "loss").encode(),
        "plots/attention_weights.svg": bar_chart_svg(labels, mean, "Mean attention weight per component",
                                                     "weight").encode(),
    }


@contextlib.contextmanager
def timed(stage_times: dict, name: str):
    """Record a stage's wall time into stage_times (also when it fails)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        stage_times[name] = round(time.perf_counter() - started, 2)


def version_with_fingerprint(database_url: str | None, key: str) -> str | None:
    """The newest published full version trained on the same data and config, if any."""
    from pathlib import Path

    from recsys.config import get_settings
    from recsys.db import get_engine
    from recsys.registry import list_versions

    engine = get_engine(get_settings(database_url=database_url))
    matches = [v for v in list_versions(engine)
               if v.kind == "full" and v.status == "published" and (v.notes or {}).get("fingerprint") == key
               and Path(v.path).exists()]
    return max(matches, key=lambda v: v.created_at).version if matches else None
