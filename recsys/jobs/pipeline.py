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
from pathlib import Path

import numpy as np

from recsys.data.accounts import AccountConfig, screen_accounts, without_excluded
from recsys.data.dataset import Dataset
from recsys.data.graph import GraphConfig
from recsys.embed.train import TrainConfig
from recsys.evaluation.protocol import EvalConfig, PreparedEvaluation, evaluate_rows, prepare, report_of
from recsys.evaluation.report import EvaluationReport, RowResult
from recsys.ingest.db import get_engine
from recsys.config import get_settings
from recsys.jobs.index_check import IndexCheckConfig, check_model_index
from recsys.jobs.plots import bar_chart_svg, line_chart_svg
from recsys.recommenders.blended import BlendConfig, BlendedRecommender
from recsys.recommenders.eges import EGESRecommender, ScorerConfig
from recsys.recommenders.lineup import NIGHTLY_ROWS, ROW_NAMES, SHIPPED_ROW, build_rows, row_groups
from recsys.recommenders.compressed import CompressedRecommender
from recsys.serving.bundle import BundleParts, GraphEvidence, parts_from_model
from recsys.serving.index import IndexConfig
from recsys.serving.registry import list_versions

# the nightly evaluation's link prediction and query count differ from `recsys evaluate`'s defaults
NIGHTLY_EVALUATION = EvalConfig(max_queries=5000, include_link_prediction=False)


@dataclass
class PipelineConfig:
    """Everything that decides what a run produces, one config object per concern (the cache key hashes it)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScorerConfig = field(default_factory=ScorerConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    accounts: AccountConfig = field(default_factory=AccountConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    index_check: IndexCheckConfig = field(default_factory=IndexCheckConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    evaluation: EvalConfig = field(default_factory=lambda: dataclasses.replace(NIGHTLY_EVALUATION))
    eval_rows: tuple[str, ...] = NIGHTLY_ROWS

    @classmethod
    def from_dict(cls, spec: dict | None) -> "PipelineConfig":
        """From JSON-able parameters (a Prefect flow's): {"train": {"dim": 32}, "evaluation": {...}, ...}.

        `seed` sets both the training and the evaluation seed.
        """
        spec = dict(spec or {})
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)} - {"seed"}
        if unknown:
            raise ValueError(f"unknown pipeline settings {sorted(unknown)}")
        seed = spec.pop("seed", None)
        parts = {}
        for f in dataclasses.fields(cls):
            if f.name == "eval_rows":
                continue
            default = f.default_factory()
            values = dict(spec.get(f.name) or {})
            if seed is not None and hasattr(default, "seed"):
                values.setdefault("seed", seed)
            # JSON has lists; the configs hold tuples
            values = {k: tuple(v) if k in ("ks", "beta_grid", "half_lives", "popularity_cuts", "embedding_scales",
                                                          "features", "layouts", "exclude_users", "interleaves") else v
                      for k, v in values.items()}
            parts[f.name] = dataclasses.replace(default, **values)
        return cls(**parts, eval_rows=tuple(spec.get("eval_rows") or NIGHTLY_ROWS))

    def as_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def fingerprint(ds: Dataset, config: PipelineConfig) -> str:
    """Identifies (data, config): an unchanged pair needs no new training."""
    payload = {"watermark": ds.watermark.as_dict() if ds.watermark else None, "config": config.as_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def screen_purchases(ds: Dataset, config: PipelineConfig) -> tuple[Dataset, dict]:
    """The purchases training uses: without excluded accounts (recsys/data/accounts.py), and the record of why.

    Nothing is deleted anywhere: the run's report and manifest say what was left out.
    """
    screen = screen_accounts(ds, config.accounts, config.evaluation.session_gap_s)
    return without_excluded(ds, screen), screen.record(ds)


def evaluation_rows(config: PipelineConfig, run_chunks=None, train_processes: int = 1) -> list:
    """The recommenders of the evaluation table (recsys/recommenders/lineup.py), in lineup order."""
    return build_rows(config.eval_rows, config, run_chunks, train_processes)


@dataclass(frozen=True)
class SplitChoices:
    """What the final training reuses from the evaluation's validation tail: EGES's scorers and the blend's
    choice (small: it travels back from a cluster's task instead of the fitted row)."""

    warm_scorer: object | None = None
    cold_scorer: object | None = None
    blend_choice: dict | None = None

    @classmethod
    def of(cls, row) -> "SplitChoices | None":
        """From the shipped row (its EGES scorers and blend) or an EGES row; None stays None."""
        if row is None or isinstance(row, SplitChoices):
            return row
        blended = isinstance(row, BlendedRecommender)
        eges = row.eges if blended else row
        return cls(getattr(eges, "warm_scorer", None), getattr(eges, "cold_scorer", None),
                   row.choice if blended else None)


def evaluation_groups(config: PipelineConfig) -> list[tuple[str, ...]]:
    """The evaluation's rows as independent groups (recsys.recommenders.lineup.row_groups): a task each."""
    return row_groups(config.eval_rows)


def evaluate_group(ds: Dataset, prep: PreparedEvaluation, config: PipelineConfig, names, log=print,
                   run_chunks=None, train_processes: int = 1,
                   run_ranges=None) -> tuple[list[RowResult], SplitChoices | None]:
    """Fit and score these rows on the prepared protocol; (their results, the choices the final training
    reuses when the group holds the shipped row or EGES)."""
    rows = build_rows(names, config, run_chunks, train_processes)
    results = evaluate_rows(ds, prep, rows, config.evaluation, log=log, run_ranges=run_ranges)
    by_name = {getattr(r, "name", ""): r for r in rows}
    return results, SplitChoices.of(by_name.get(SHIPPED_ROW) or by_name.get("EGES"))


def evaluation_report(ds: Dataset, prep: PreparedEvaluation, config: PipelineConfig,
                      groups: list[tuple[list[RowResult], SplitChoices | None]]) -> tuple[EvaluationReport, SplitChoices | None]:
    """The groups' rows as one table in lineup order, and the shipped row's choices (else EGES's)."""
    order = {name: i for i, name in enumerate(ROW_NAMES)}
    rows = sorted((row for results, _ in groups for row in results), key=lambda row: order.get(row.name, len(order)))
    # one group holds EGES (and the shipped row, which needs it): the only one with choices
    choices = next((chosen for _, chosen in groups if chosen is not None), None)
    return report_of(ds, prep, config.evaluation, rows), choices


def run_evaluation(ds: Dataset, config: PipelineConfig, log=print,
                   train_processes: int = 1) -> tuple[EvaluationReport, SplitChoices | None]:
    """The offline protocol on `ds` in this process; returns (report, the choices the final training reuses).

    Those are the shipped blend's when evaluated (its EGES scorers and its blend), else EGES's.
    The flow on a Dask cluster runs `evaluation_groups` as tasks instead, each `evaluate_group` with its
    walk and query chunks on the cluster (flows/train_and_publish.py, recsys/jobs/dask_*.py).
    """
    prep = prepare(ds, config.evaluation)
    group = evaluate_group(ds, prep, config, config.eval_rows, log, train_processes=train_processes)
    return evaluation_report(ds, prep, config, [group])


def train_final(ds: Dataset, config: PipelineConfig, chosen_from=None, progress: bool = True,
                run_chunks=None, train_processes: int = 1, rendezvous=None) -> BlendedRecommender:
    """Train the shipped model on all purchases: EGES, its compressed index's blend with co-purchases.

    rendezvous: train with ranks on other machines too (recsys.embed.distributed.Rendezvous, torchrun);
    train_processes is then the ranks of this machine.

    When the evaluation already chose the scorers (and the blend) on its
    validation split, reuse those choices (one training instead of two).
    """
    rec = EGESRecommender(dataclasses.replace(config.train, mode="eges"), config.scoring, name="EGES",
                          graph=config.graph, session_gap_s=config.evaluation.session_gap_s, progress=progress,
                          run_chunks=run_chunks, train_processes=train_processes, rendezvous=rendezvous)
    chosen = SplitChoices.of(chosen_from)
    if chosen is not None and chosen.warm_scorer is not None:
        rec.fit_with_scorers(ds, chosen.warm_scorer, chosen.cold_scorer)
    else:
        rec.fit(ds)
    shipped = BlendedRecommender(CompressedRecommender(rec, config.index), config.blend, name=SHIPPED_ROW,
                                 session_gap_s=config.evaluation.session_gap_s)
    choice = chosen.blend_choice if chosen is not None else None
    shipped.prepare(ds, choice if choice is not None else shipped.choose(ds))
    return shipped


def shipped_metrics(report) -> dict:
    """Metrics stored with a version: the shipped row at the top level (what the gates read), all rows beside."""
    table = report.to_dict()
    rows = {row["name"]: row for row in table.get("rows", [])}
    shipped = rows.get(SHIPPED_ROW) or rows.get("EGES") or {}
    return {**shipped, "rows": rows, "summary": table.get("summary", {}), "config": table.get("config", {})}


def build_parts(shipped: BlendedRecommender, ds: Dataset, config: PipelineConfig, metrics: dict,
                extra_notes: dict | None = None, log=None, execution: dict | None = None,
                fill_shards=None) -> BundleParts:
    """The bundle of the shipped model: EGES's model and scorers, the index, the blend, the training plots.

    The index is the smallest layout of the run's index check that keeps
    Recall@20 of exact search (recsys/jobs/index_check.py); its record goes
    into the manifest (`index_check`) and the metrics, where the promotion
    gate reads it. With the check off, `config.index` as configured. fill_shards: where a sharded
    index's shards are filled (recsys.serving.shards.FillShards; a cluster's: recsys/jobs/dask_index.py).
    """
    rec = shipped.eges
    if rec.trained is None or shipped.warm_blend is None:
        raise ValueError(f"{shipped.name}: fit it before publishing")
    check = None
    if config.index_check.enabled:
        check = check_model_index(rec, ds, config.index, config.index_check, config.evaluation, log=log,
                                  fill_shards=fill_shards)
        metrics = {**metrics, "index_check": check.record}
        if log:
            log(f"index check: shipping {check.layout} ({check.record['bytes_per_item']} bytes/item, "
                f"loss {check.record['loss']:.2%} of exact Recall@20)")
    parts = parts_from_model(rec.trained, ds, rec.warm_scorer, rec.cold_scorer, log_popularity=rec.log_popularity,
                             index_config=check.config if check else config.index, metrics=metrics,
                             watermark=ds.watermark.as_dict() if ds.watermark else {},
                             indexes=check.indexes if check else None, fill_shards=fill_shards)
    parts.index_check = check.record if check else None
    parts.execution = execution
    parts.graph = GraphEvidence.from_positions(parts.items.index_row, shipped.warm_blend, shipped.cold_blend,
                                               shipped.item_partners, shipped.category_partners, shipped.log_pop,
                                               shipped.category_support, shipped.category_members, shipped.choice)
    parts.validate()
    parts.notes.update(extra_notes or {})
    parts.extra_files.update(training_plots(rec.trained))
    return parts


def training_plots(trained) -> dict[str, bytes]:
    """The loss curve and the mean attention weight per component, as SVG files for the bundle."""
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
    engine = get_engine(get_settings(database_url=database_url))
    matches = [v for v in list_versions(engine)
               if v.kind == "full" and v.status == "published" and (v.notes or {}).get("fingerprint") == key
               and Path(v.path).exists()]
    return max(matches, key=lambda v: v.created_at).version if matches else None
