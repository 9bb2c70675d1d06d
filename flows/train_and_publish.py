"""Nightly flow: extract -> evaluate -> train -> compress -> publish -> promote.

    prefect server start                      # or use PREFECT_API_URL of your server
    recsys train                              # one run now
    recsys schedule                           # nightly/hourly/weekly deployments

Thin orchestration over recsys.jobs.pipeline; all the work is in the library.
"""
from __future__ import annotations

import contextlib
import json
import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.tasks import exponential_backoff

from recsys.config import get_settings
from recsys.embed.distributed import Rendezvous
from recsys.errors import UserError
from recsys.ingest.db import get_engine, is_transient
from recsys.ingest.extract import SMALLEST_TRAINABLE, extract_configured
from recsys.jobs import pipeline
from recsys.jobs.dask_index import DaskShardFiller
from recsys.jobs.dask_queries import DaskQueryRunner
from recsys.jobs.dask_walks import DaskChunkRunner
from recsys.jobs.execution import Execution, dask_runner, peak_rss_mb
from recsys.jobs.report import run_report_markdown, table_rows
from recsys.serving.registry import GateFailedError, Gates, alias_history, get_version, publish
from recsys.serving.registry import promote as promote_version
from recsys.serving.runlock import publish_lock


class NotEnoughDataError(UserError):
    """The data is too small (or has no co-purchases) for the evaluation split or the walks."""


_TOO_LITTLE = ("need at least 2 purchases to split", "no walks to train on")


@contextlib.contextmanager
def _data_size_errors(ds):
    """The library's ValueErrors about too little data, as one paragraph for a person."""
    try:
        yield
    except ValueError as exc:
        if not any(text in str(exc) for text in _TOO_LITTLE):
            raise
        raise NotEnoughDataError(
            f"Not enough data to train: {ds.n_purchases:,} purchase lines of {ds.n_items:,} items by "
            f"{ds.n_users:,} users ({exc}). {SMALLEST_TRAINABLE}") from None


def _retry_on_database_errors(task, task_run, state) -> bool:
    """Retry extraction only when the database was unreachable, not on bad data."""
    try:
        state.result()
    except Exception as exc:  # the failed state's exception
        return is_transient(exc)
    return False


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.2,
      retry_condition_fn=_retry_on_database_errors)
def extract(database_url: str | None):
    ds = extract_configured(get_settings(database_url=database_url))
    get_run_logger().info("extracted %s items, %s users, %s purchase lines (watermark %s)",
                          ds.n_items, ds.n_users, ds.n_purchases, ds.watermark.as_dict())
    return ds


@task(cache_policy=NO_CACHE)
def screen(ds, config: pipeline.PipelineConfig):
    kept, record = pipeline.screen_purchases(ds, config)
    logger = get_run_logger()
    if record["excluded_lines"]:
        logger.warning("left out of training: %s lines of %s accounts (%s); the database keeps them",
                       record["excluded_lines"], record["excluded_accounts"], json.dumps(record["by_reason"]))
    else:
        logger.info("account screen: nothing left out")
    return kept, record


@task(cache_policy=NO_CACHE)
def evaluate(ds, config: pipeline.PipelineConfig, train_processes: int = 1):
    """The evaluation in the flow's process (on a cluster: `evaluate_on_cluster`)."""
    logger = get_run_logger()
    with _data_size_errors(ds):
        report, chosen = pipeline.run_evaluation(ds, config, log=logger.info, train_processes=train_processes)
    logger.info("evaluation:\n%s", report.to_table())
    return report, chosen


@task(cache_policy=NO_CACHE)
def evaluate_rows(ds, prep, config: pipeline.PipelineConfig, names: list[str], train_processes: int = 1):
    """One group of the evaluation's rows (recsys.recommenders.lineup.row_groups), as a task on a Dask worker.

    Its walk chunks and query chunks are Dask tasks of the same cluster (a Prefect task each would cost
    more than the chunk: docs/scaling.md); this task leaves the worker's thread pool while it waits on them.
    """
    import multiprocessing

    from distributed import worker_client

    logger = get_run_logger()
    if train_processes > 1 and multiprocessing.current_process().daemon:
        logger.warning("this Dask worker runs as a daemon process, which cannot start training ranks: the "
                       "rows %s train in one process here (start `dask worker` with DASK_DISTRIBUTED__WORKER__DAEMON=False "
                       "or --no-nanny to let them)",
                       names)
        train_processes = 1
    with worker_client() as client:
        run_chunks, run_ranges = DaskChunkRunner(client=client), DaskQueryRunner(client)
        results, chosen = pipeline.evaluate_group(ds, prep, config, names, logger.info, run_chunks,
                                                  train_processes, run_ranges)
    return results, chosen, {"walk_chunks": run_chunks.chunks_run, "query_chunks": run_ranges.chunks_run,
                             "rows_scored_in_task": run_ranges.not_shipped, "peak_rss_mb": peak_rss_mb()}


def evaluate_on_cluster(ds, config: pipeline.PipelineConfig, run_chunks, train_processes: int, how: dict):
    """The evaluation's row groups as Prefect tasks on Prefect's DaskTaskRunner over the run's cluster.

    The data and the protocol's split are scattered to the cluster once and reach the tasks as futures
    (not through their parameters); each group fits and scores its rows on a worker; the table is put
    together here in lineup order, the same table one process makes (tests/test_scale_out.py).
    """
    from prefect_dask import DaskTaskRunner

    logger = get_run_logger()
    client = run_chunks.client()
    groups = pipeline.evaluation_groups(config)
    prep = pipeline.prepare(ds, config.evaluation)
    with _data_size_errors(ds), prefect_api_for_workers(client), \
            DaskTaskRunner(address=client.scheduler.address) as runner:
        ds_ref, prep_ref = runner.client.scatter([ds, prep], hash=False)
        futures = [runner.submit(evaluate_rows, {"ds": ds_ref, "prep": prep_ref, "config": config,
                                                 "names": list(names), "train_processes": train_processes})
                   for names in groups]
        done = [future.result() for future in futures]
    report, chosen = pipeline.evaluation_report(ds, prep, config, [(rows, c) for rows, c, _ in done])
    walks = sum(d["walk_chunks"] for _, _, d in done)
    run_chunks.chunks_run += walks  # the run's count (dask_runner's record)
    how["evaluation_tasks"] = [list(names) for names in groups]
    how["query_chunks_on_dask"] = sum(d["query_chunks"] for _, _, d in done)
    how["rows_scored_in_task"] = [row for _, _, d in done for row in d["rows_scored_in_task"]]
    logger.info("evaluation on Dask: %s tasks, %s walk chunks, %s query chunks; peak memory of the tasks' "
                "workers (MB): %s", len(groups), walks, how["query_chunks_on_dask"],
                [d["peak_rss_mb"] for _, _, d in done])
    logger.info("evaluation:\n%s", report.to_table())
    return report, chosen


@contextlib.contextmanager
def prefect_api_for_workers(client):
    """Dask workers report their task runs to this flow's Prefect API.

    Without PREFECT_API_URL the flow runs on a temporary local server; its address is passed on in the
    tasks' settings (a worker would otherwise start a server of its own). Workers on other machines cannot
    reach that one: they need a Prefect server both sides reach (README, "Running on a cluster").
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    host = client.scheduler.address.split("://")[-1].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
        raise UserError(f"The Dask scheduler {client.scheduler.address} is on another machine, and this flow "
                        "runs on a temporary Prefect server only this machine can reach: set PREFECT_API_URL to "
                        "a Prefect server the workers reach too (`prefect server start`).")
    server = SubprocessASGIServer()  # the running temporary server (one per process)
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@task(cache_policy=NO_CACHE)
def train(ds, config: pipeline.PipelineConfig, chosen_from, run_chunks=None, train_processes: int = 1,
          rendezvous=None):
    with _data_size_errors(ds):
        shipped = pipeline.train_final(ds, config, chosen_from=chosen_from, progress=True, run_chunks=run_chunks,
                                       train_processes=train_processes, rendezvous=rendezvous)
    stats = shipped.eges.trained.stats
    get_run_logger().info("trained EGES on all data: %s; blend %s", json.dumps(stats, default=str),
                          json.dumps({k: shipped.choice[k] for k in ("half_life_share", "warm", "cold")}, default=str))
    return shipped


@task(cache_policy=NO_CACHE)
def compress_and_publish(rec, ds, config: pipeline.PipelineConfig, metrics: dict, database_url: str | None,
                         notes: dict, execution: dict | None = None, fill_shards=None):
    settings = get_settings(database_url=database_url)
    logger = get_run_logger()
    parts = pipeline.build_parts(rec, ds, config, metrics, notes, log=logger.info, execution=execution,
                                 fill_shards=fill_shards)
    if fill_shards is not None and execution is not None:
        execution["index_shards_on_dask"] = fill_shards.shards_run
    version = publish(get_engine(settings), settings.resolved_artifact_root, parts, alias="candidate",
                      reason="nightly train-and-publish")
    logger.info("published version %s (candidate)", version)
    return version, parts.index_check


@task(cache_policy=NO_CACHE)
def promote(version: str, database_url: str | None, gates: dict):
    engine = get_engine(get_settings(database_url=database_url))
    try:
        promote_version(engine, version, Gates(**gates))
    except GateFailedError as exc:
        get_run_logger().warning("not promoted: %s", exc)
        return False
    get_run_logger().info("version %s is now production", version)
    return True


def publish_artifacts(version: str, metrics: dict, ds, stages: dict, promoted: bool | None,
                      database_url: str | None, gates: dict | None = None, execution: dict | None = None) -> str:
    """The run's markdown report and metrics table as Prefect artifacts."""
    engine = get_engine(get_settings(database_url=database_url))
    info = get_version(engine, version)
    previous = None
    for move in reversed(alias_history(engine, "production")):
        if move["to_version"] != version:
            previous = (move["to_version"], get_version(engine, move["to_version"]).metrics)
            break
    counts = {"items": ds.n_items, "users": ds.n_users, "purchase lines": ds.n_purchases,
              "watermark": ds.watermark.as_dict() if ds.watermark else None}
    plots = {title: f"{info.path}/plots/{name}" for title, name in (("loss curve", "loss_curve.svg"),
                                                                    ("attention weights", "attention_weights.svg"))}
    markdown = run_report_markdown(version=version, metrics=metrics, previous=previous, counts=counts,
                                   stages=stages, promoted=promoted, bundle_path=info.path, plots=plots,
                                   index_gate=Gates(**(gates or {})).max_index_loss, execution=execution)
    create_markdown_artifact(key="recsys-run-report", markdown=markdown,
                             description=f"recsys version {version}")
    create_table_artifact(key="recsys-metrics", table=table_rows(metrics),
                          description=f"Offline metrics of version {version} beside the baselines")
    return markdown


def rendezvous_of(train_nodes: int, rdzv_endpoint: str | None) -> Rendezvous | None:
    """Where the training ranks of several machines meet (None: this machine only); a UserError when unclear."""
    if train_nodes < 1:
        raise UserError(f"--train-nodes must be >= 1, got {train_nodes}")
    if train_nodes == 1 and not rdzv_endpoint:
        return None
    if not rdzv_endpoint:
        raise UserError(f"--train-nodes {train_nodes} needs --rdzv-endpoint HOST:PORT, where the machines' "
                        "training ranks meet (torchrun's c10d rendezvous)")
    rendezvous = Rendezvous(rdzv_endpoint, train_nodes)
    try:
        rendezvous.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return rendezvous


@flow(name="train-and-publish", log_prints=True)
def train_and_publish(database_url: str | None = None, config: dict | None = None, gates: dict | None = None,
                      force: bool = False, wait_for_lock_s: float = 0.0, dask_address: str | None = None,
                      dask_workers: int = 0, train_processes: int = 1, train_nodes: int = 1,
                      rdzv_endpoint: str | None = None) -> dict:
    """Train EGES on the shop's data, evaluate it beside the baselines, publish and promote a version.

    config: PipelineConfig settings (e.g. {"train": {"dim": 32}, "evaluation": {"max_queries": 2000}});
    gates: recsys.serving.registry.Gates fields; force: retrain even when data and config are unchanged;
    dask_address / dask_workers: walk on an existing Dask scheduler / a local cluster of N workers
    (recsys/jobs/execution.py; RECSYS_DASK_ADDRESS is the address's default); train_processes: EGES
    trained data-parallel on that many processes of this machine (recsys/embed/distributed.py);
    train_nodes / rdzv_endpoint: the shipped model's training also takes ranks that train_nodes - 1 other
    machines start with torchrun, meeting at rdzv_endpoint (HOST:PORT; README, "Running on a cluster").
    """
    if int(train_processes) < 1:
        raise UserError(f"--train-processes must be >= 1, got {train_processes}")
    rendezvous = rendezvous_of(int(train_nodes), rdzv_endpoint)
    execution = Execution.resolve(dask_address, dask_workers)
    logger = get_run_logger()
    cfg = pipeline.PipelineConfig.from_dict(config)
    stages: dict[str, float] = {}
    started = time.perf_counter()
    with publish_lock(get_settings(database_url=database_url), wait_s=wait_for_lock_s):
        with pipeline.timed(stages, "extract"):
            ds = extract(database_url)
        key = pipeline.fingerprint(ds, cfg)
        existing = None if force else pipeline.version_with_fingerprint(database_url, key)
        if existing is not None:
            logger.info("data and config unchanged since version %s: nothing to train", existing)
            return {"version": existing, "promoted": None, "cached": True, "stages": stages}
        with pipeline.timed(stages, "screen"):
            ds, accounts = screen(ds, cfg)
        with dask_runner(execution, log=logger.info) as (run_chunks, how, settle):
            how["train_processes"] = int(train_processes)
            how["train_nodes"] = int(train_nodes)
            with pipeline.timed(stages, "evaluate"):
                if run_chunks is None:
                    report, chosen_on_split = evaluate(ds, cfg, int(train_processes))
                else:
                    report, chosen_on_split = evaluate_on_cluster(ds, cfg, run_chunks, int(train_processes), how)
            with pipeline.timed(stages, "train"):
                rec = train(ds, cfg, chosen_on_split, run_chunks, int(train_processes), rendezvous)
            metrics = {**pipeline.shipped_metrics(report), "accounts": accounts}
            fill_shards = DaskShardFiller(run_chunks.client()) if run_chunks is not None else None
            settle()  # the manifest's record of how the run went, before it is written
            with pipeline.timed(stages, "compress+publish"):
                version, index_check = compress_and_publish(rec, ds, cfg, metrics, database_url,
                                                            {"fingerprint": key, "stages": stages}, how, fill_shards)
        if index_check is not None:
            metrics["index_check"] = index_check
        with pipeline.timed(stages, "promote"):
            promoted = promote(version, database_url, gates or {})
    stages["total"] = round(time.perf_counter() - started, 2)
    publish_artifacts(version, metrics, ds, stages, promoted, database_url, gates or {}, how)
    return {"report": report.to_table(), "version": version, "accounts": accounts, "promoted": promoted, "cached": False, "stages": stages,
            "metrics": {"warm_recall@20": metrics.get("warm", {}).get("recall", {}).get("20"),
                        "cold_recall@20": metrics.get("cold", {}).get("recall", {}).get("20")},
            "index_check": metrics.get("index_check"), "execution": how}
