"""The `recsys` command line. Thin: every command calls the library.

Commands import the library inside their bodies, on purpose: `recsys similar`
must not wait for torch and numba (seconds), nor `recsys --help` for anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from recsys.app.cli_data import register as register_data_commands
from recsys.app.cli_http import register as register_http_commands
from recsys.app.cli_serving import register as register_serving_commands
from recsys.app.common import database_option, engine_for, fail, quiet_expected_flow_errors, set_debug, user_errors
from recsys.errors import UserError

DATASETS = ("tafeng", "online-retail")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="recsys")
@click.option("--debug", is_flag=True, help="Print tracebacks (ours and Prefect's) before an error message.")
def main(debug):
    """Item embeddings (EGES) and a similar-items index from your shop's Postgres."""
    set_debug(debug)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # the temporary Prefect server of a one-off run must not phone home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server's first start (its own migrations) takes over Prefect's 20 s on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@main.command()
@click.option("--items", "items_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Items file (.csv or .parquet): item_id, category [, brand, price, title, in_stock, created_at, ...].")
@click.option("--purchases", "purchases_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Purchases file (.csv or .parquet): user_id, item_id, purchased_at [, order_id, quantity, unit_price].")
@click.option("--dataset", type=click.Choice(DATASETS), help="Use a built-in adapter for a public data set.")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--side-feature", "side_features", multiple=True,
              help="An extra items column to use as a categorical side feature (repeatable).")
@click.option("--create-missing-items", is_flag=True,
              help="Create catalogue rows (category 'unknown') for purchased items missing from the catalogue "
                   "instead of rejecting those purchases.")
@click.option("--strict", is_flag=True, help="Abort the whole load, changing nothing, if any row would be rejected.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of CSV files.")
@click.option("--delimiter", help="Field delimiter of CSV files, e.g. ';' (default: detected from the header line).")
@click.option("--decimal", type=click.Choice([".", ","]), default=".", show_default=True,
              help="Decimal mark of numbers in CSV files (',' for 1,99).")
@click.option("--date-format", help="strptime format of the timestamps, e.g. '%d/%m/%Y %H:%M' (default: ISO 8601 only).")
@click.option("--dayfirst", is_flag=True, help="Timestamps are day/month/year (with / . or -, optional time).")
@click.option("--duplicate-lines", type=click.Choice(["reject", "keep", "sum"]), default=None,
              help="Purchase lines identical in every column: reject them (default: a file exported twice "
                   "must not double the purchases), keep each as a line, or sum them into the first line's quantity.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the load report as JSON.")
@database_option
@user_errors
def load(items_path, purchases_path, dataset, path, side_features, create_missing_items, strict, encoding,
         delimiter, decimal, date_format, dayfirst, duplicate_lines, json_out, database_url):
    """Import a catalogue and purchase history into Postgres.

    \b
    recsys load --items items.csv --purchases purchases.parquet [--side-feature color]
    recsys load --dataset tafeng ../shared/data/tafeng/ta_feng.csv.zip
    recsys load --dataset online-retail online_retail.parquet

    Idempotent: loading the same files again changes nothing. Every input row is
    loaded or rejected with a reason (table load_rejects; `recsys rejects`).
    """
    from recsys.ingest.load import load_frames

    if dataset:
        if path is None:
            raise UserError(f"--dataset {dataset} needs the path of the data set file, e.g. "
                            f"`recsys load --dataset {dataset} PATH`.")
        if items_path or purchases_path:
            raise UserError("--dataset reads one file; do not combine it with --items/--purchases.")
        if side_features:
            raise UserError("--side-feature applies to --items files; the adapters declare their own side features.")
        used = [name for name, value in (("--delimiter", delimiter), ("--decimal", decimal != "."),
                                         ("--date-format", date_format), ("--dayfirst", dayfirst),
                                         ("--duplicate-lines", duplicate_lines)) if value]
        if used:
            raise UserError(f"{', '.join(used)} appl{'ies' if len(used) == 1 else 'y'} to --items/--purchases "
                            f"files; the --dataset {dataset} adapter knows its file's format.")
        if dataset == "tafeng":
            from recsys.ingest.loaders.tafeng import read_frames
        else:
            from recsys.ingest.loaders.online_retail import read_frames
        click.echo(f"Reading {path} ({dataset}) ...")
        frames = read_frames(path, encoding=encoding)
    else:
        if path is not None:
            raise UserError(f"Unexpected argument {str(path)!r}: use --items/--purchases, or --dataset NAME PATH.")
        from recsys.ingest.loaders.generic import read_frames

        click.echo("Reading " + ", ".join(str(p) for p in (items_path, purchases_path) if p) + " ...")
        frames = read_frames(items_path, purchases_path, side_features=list(side_features), encoding=encoding,
                             delimiter=delimiter, decimal=decimal, date_format=date_format, dayfirst=dayfirst,
                             duplicate_lines=duplicate_lines or "reject")
    engine = engine_for(database_url)
    click.echo(f"Writing {frames.input_rows:,} rows to {engine.url.render_as_string(hide_password=True)} ...")
    report = load_frames(engine, frames, create_missing_items=create_missing_items, strict=strict)
    click.echo(report.to_text())
    if json_out:
        Path(json_out).write_text(json.dumps(report.as_dict(), indent=2))


@main.command()
@click.option("--load", "load_id", type=int, help="Only this load (default: the latest load with rejects).")
@click.option("--reason", help="Only this reason code.")
@click.option("--limit", default=20, show_default=True, help="Rows to list.")
@database_option
@user_errors
def rejects(load_id, reason, limit, database_url):
    """List rows that a load rejected, with file, row, field and reason."""
    import sqlalchemy as sa

    from recsys.ingest.migrate import migrate

    engine = engine_for(database_url)
    migrate(engine)
    with engine.connect() as conn:
        if load_id is None:
            load_id = conn.execute(sa.text("SELECT max(load_id) FROM load_rejects")).scalar()
            if load_id is None:
                click.echo("No rejected rows recorded.")
                return
        where, params = "load_id = :l", {"l": load_id}
        if reason:
            where += " AND reason = :r"
            params["r"] = reason
        counts = conn.execute(sa.text(f"SELECT reason, count(*) FROM load_rejects WHERE {where} "
                                      "GROUP BY reason ORDER BY 2 DESC"), params).fetchall()
        click.echo(f"Load {load_id}: " + (", ".join(f"{r} {c:,}" for r, c in counts) or "no rejected rows"))
        rows = conn.execute(sa.text(f"SELECT file_path, row_number, field, reason, detail FROM load_rejects "
                                    f"WHERE {where} ORDER BY file_path, row_number LIMIT :lim"),
                            {**params, "lim": limit}).fetchall()
    for file_path, row_number, field, reason_code, detail in rows:
        field_part = f", field {field!r}" if field else ""
        click.echo(f"  {file_path}, row {row_number}{field_part} [{reason_code}]: {detail}")


@main.group()
def db():
    """The database: migrations and the embedded server."""


@db.command("migrate")
@database_option
@user_errors
def db_migrate(database_url):
    """Apply pending schema migrations (every command does this when needed)."""
    from recsys.ingest.migrate import migrate

    applied = migrate(engine_for(database_url))
    click.echo("Applied: " + ", ".join(applied) if applied else "Schema is up to date.")


@db.command("status")
@database_option
@user_errors
def db_status(database_url):
    """Where the database is and what it holds."""
    import sqlalchemy as sa

    from recsys.ingest.migrate import migrate

    engine = engine_for(database_url)
    migrate(engine)
    with engine.connect() as conn:
        items = conn.execute(sa.text("SELECT count(*) FROM items")).scalar()
        purchases, first, last = conn.execute(sa.text(
            "SELECT count(*), min(purchased_at), max(purchased_at) FROM purchases")).one()
        users = conn.execute(sa.text("SELECT count(DISTINCT user_id) FROM purchases")).scalar()
    click.echo(f"Database: {engine.url.render_as_string(hide_password=True)}")
    click.echo(f"  items: {items:,}  purchases: {purchases:,}  users: {users:,}")
    if purchases:
        click.echo(f"  purchases from {first:%Y-%m-%d} to {last:%Y-%m-%d}")


@db.command("stop")
@user_errors
def db_stop():
    """Stop the embedded Postgres server (it is restarted by the next command)."""
    from recsys.config import get_settings
    from recsys.ingest.db import stop_embedded

    settings = get_settings()
    stopped = stop_embedded(settings)
    click.echo(f"Stopped the embedded Postgres in {settings.embedded_pgdata}." if stopped
               else "The embedded Postgres is not running.")


def _duration(ctx, param, value):
    from recsys.durations import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _extract(database_url, progress=True):
    from recsys.config import get_settings
    from recsys.ingest.extract import extract_configured

    ds = extract_configured(get_settings(database_url=database_url), progress=progress)
    if ds.n_purchases == 0:
        raise UserError("The database has no purchases yet. Load some first: `recsys load --items ... "
                        "--purchases ...` or `recsys load --dataset tafeng PATH`.")
    return ds


@main.command()
@click.option("--test-fraction", default=0.15, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="The last share of purchases (by time) that forms the test period.")
@click.option("--session-gap", default="1h", show_default=True, callback=_duration,
              help="Gap that cuts a user's purchases without an order id into baskets (e.g. 30m, 1h, 3600).")
@click.option("--max-queries", default=20000, show_default=True, help="Queries per segment (sampled with --seed).")
@click.option("--rows", help="Comma-separated subset of rows to run (default: all), e.g. 'popularity,EGES'.")
@click.option("--no-link-prediction", is_flag=True, help="Skip the link-prediction AUC (one more training per embedding row).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@database_option
@user_errors
def evaluate(test_fraction, session_gap, max_queries, rows, no_link_prediction, seed, json_out, database_url):
    """Run the offline evaluation protocol on the database's data and print the table.

    Chronological split; warm queries (items bought in training) and cold queries
    (catalogue items first bought in the test period, by side features only);
    Recall/HitRate@10/20/50, MRR and coverage for every baseline and model row.
    """
    from recsys.evaluation.protocol import evaluate as run_evaluation
    from recsys.jobs.pipeline import PipelineConfig, evaluation_rows, screen_purchases
    from recsys.recommenders.lineup import ROW_NAMES

    wanted = [r.strip() for r in rows.split(",") if r.strip()] if rows else list(ROW_NAMES)
    unknown = [w for w in wanted if w.lower() not in {n.lower() for n in ROW_NAMES}]
    if unknown:
        raise UserError(f"Unknown row(s) {', '.join(unknown)}; rows are: {', '.join(ROW_NAMES)}.")
    pipeline_config = PipelineConfig.from_dict({
        "seed": seed, "eval_rows": wanted,
        "evaluation": {"test_fraction": test_fraction, "session_gap_s": session_gap, "max_queries": max_queries,
                       "include_link_prediction": not no_link_prediction}})
    config = pipeline_config.evaluation
    recommenders = evaluation_rows(pipeline_config)  # a row that reuses another's fit brings it along
    ds, screened = screen_purchases(_extract(database_url), pipeline_config)  # what the nightly run trains on
    if screened["excluded_lines"]:
        click.echo(f"Left out, as training leaves them out: {screened['excluded_lines']:,} lines of "
                   f"{screened['excluded_accounts']:,} accounts that look injected ({', '.join(screened['by_reason'])}; "
                   "`recsys diagnose` lists them).", err=True)
    report = run_evaluation(ds, recommenders, config, log=lambda line: click.echo(line, err=True))
    click.echo(report.to_table())
    if json_out:
        Path(json_out).write_text(report.to_json())
        click.echo(f"Wrote {json_out}")


@main.command()
@click.option("--quick", is_flag=True, help="Skip the LightGCN and BGE vs matrix factorisation comparison (the slow part).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the report as JSON.")
@database_option
@user_errors
def diagnose(quick, seed, json_out, database_url):
    """Graph-readiness report: is a graph method worth it on this data?"""
    from recsys.jobs.diagnose import DiagnoseConfig
    from recsys.jobs.diagnose import diagnose as run_diagnose

    ds = _extract(database_url)
    report = run_diagnose(ds, DiagnoseConfig(compare_methods=not quick, seed=seed))
    click.echo(report.to_text())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
        click.echo(f"Wrote {json_out}")


@main.command()
@click.option("--force", is_flag=True, help="Retrain even when the data and configuration are unchanged.")
@click.option("--dim", type=int, help="Embedding dimension (default 64).")
@click.option("--epochs", type=int, help="Passes over the walks (default from TrainConfig).")
@click.option("--threads", type=int, help="CPU threads of the training loop (default: all cores).")
@click.option("--max-queries", default=5000, show_default=True, help="Evaluation queries per segment.")
@click.option("--all-rows", is_flag=True, help="Also evaluate the rows the nightly flow skips: BGE, GES, RP3beta, EASE, LightGCN (minutes more).")
@click.option("--min-warm-recall", default=0.0, show_default=True, help="Promotion gate: warm Recall@20 floor.")
@click.option("--min-cold-recall", default=0.0, show_default=True, help="Promotion gate: cold Recall@20 floor.")
@click.option("--max-drop", default=0.05, show_default=True,
              help="Promotion gate: largest relative Recall@20 drop allowed against production.")
@click.option("--dask-workers", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="Run the heavy stages on a local Dask cluster of N worker processes started for this run: "
                   "the evaluation's rows as Prefect tasks (DaskTaskRunner), walks, query chunks and index "
                   "shards as Dask tasks (same walks, same model as one process).")
@click.option("--dask", "dask_address", envvar="RECSYS_DASK_ADDRESS",
              help="The same on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 "
                   "(default: $RECSYS_DASK_ADDRESS; remote workers need PREFECT_API_URL).")
@click.option("--train-processes", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Train EGES data-parallel on N processes of this machine (torch.distributed, gloo): each "
                   "trains on its share of the walks, the updates are summed 16 times an epoch.")
@click.option("--train-nodes", type=click.IntRange(1, 4096), default=1, show_default=True,
              help="Train the shipped model with ranks on M machines: this one (--train-processes ranks) and "
                   "M - 1 others that run torchrun ... -m recsys.embed.distributed (README, \"Running on a "
                   "cluster\"). Needs --rdzv-endpoint.")
@click.option("--rdzv-endpoint", envvar="RECSYS_RDZV_ENDPOINT",
              help="HOST:PORT where the machines' training ranks meet (torchrun's c10d rendezvous; "
                   "default: $RECSYS_RDZV_ENDPOINT).")
@click.option("--index-shards", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Split the candidate index by item range into N shard files, searched in parallel and "
                   "merged (the results equal one index's).")
@click.option("--allow-index-loss", is_flag=True,
              help="Promote even when the shipped compressed index loses more than 2% of exact search's "
                   "Recall@20 on the run's validation queries (the run report says it was overridden).")
@click.option("--wait-for-lock", default="0", show_default=True, callback=_duration,
              help="If another run is publishing, wait this long (e.g. 30m) instead of exiting.")
@click.option("--seed", default=0, show_default=True)
@click.option("--deterministic", is_flag=True,
              help="Bit-identical reruns on the same data: one CPU thread for training, FAISS and torch "
                   "(slower; same as --threads 1 plus single-threaded FAISS and torch).")
@database_option
@user_errors
def train(force, dim, epochs, threads, max_queries, all_rows, min_warm_recall, min_cold_recall, max_drop,
          dask_workers, dask_address, train_processes, train_nodes, rdzv_endpoint, index_shards, allow_index_loss,
          wait_for_lock, seed, deterministic, database_url):
    """Run the train-and-publish flow once, now.

    Extract, evaluate against the baselines, train EGES on all data, compress,
    publish a version and promote it to production if the quality gates pass.
    """
    if deterministic and threads and threads != 1:
        raise UserError(f"--deterministic trains on one thread; drop --threads {threads}.")
    _check_trainable(database_url)  # before importing prefect and torch: a clear answer in a second
    from recsys.jobs.execution import Execution

    Execution.resolve(dask_address, dask_workers)  # conflicting options: one paragraph before the flow starts

    from flows.train_and_publish import rendezvous_of, train_and_publish
    from recsys.recommenders.lineup import ROW_NAMES

    rendezvous_of(train_nodes, rdzv_endpoint)  # --train-nodes without an endpoint: said before the flow starts

    config = {"seed": seed, "evaluation": {"max_queries": max_queries}, "train": {}}
    if dim:
        config["train"]["dim"] = dim
    if epochs:
        config["train"]["epochs"] = epochs
    if threads:
        config["train"]["num_threads"] = threads
    if deterministic:
        _single_threaded()
        config["train"]["num_threads"] = 1
    if all_rows:
        config["eval_rows"] = list(ROW_NAMES)
    if index_shards > 1:
        config["index"] = {"shards": index_shards}
    gates = {"min_warm_recall_at_20": min_warm_recall, "min_cold_recall_at_20": min_cold_recall,
             "max_relative_drop": max_drop}
    if allow_index_loss:
        gates["max_index_loss"] = None
    quiet_expected_flow_errors()
    result = train_and_publish(database_url=database_url, config=config, gates=gates, force=force,
                               wait_for_lock_s=float(wait_for_lock), dask_address=dask_address,
                               dask_workers=dask_workers, train_processes=train_processes, train_nodes=train_nodes,
                               rdzv_endpoint=rdzv_endpoint)
    _print_train_result(result)


def _single_threaded() -> None:
    """One thread for every numeric library the run uses: float sums in a fixed order."""
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


def _check_trainable(database_url) -> None:
    """Before the flow starts: the database answers, has our schema, and holds enough purchases.

    A one-off `recsys train` fails at once with one paragraph; a scheduled run retries an
    unreachable database with backoff (flows/train_and_publish.py).
    """
    import sqlalchemy as sa

    from recsys.config import get_settings
    from recsys.ingest.extract import SMALLEST_TRAINABLE, relation_name
    from recsys.ingest.migrate import migrate

    settings = get_settings(database_url=database_url)
    engine = engine_for(database_url)
    migrate(engine)
    relation = relation_name(settings.purchases_relation)
    try:
        with engine.connect() as conn:
            n = conn.execute(sa.text(f"SELECT count(*) FROM (SELECT 1 FROM {relation} LIMIT 2) x")).scalar()
    except sa.exc.ProgrammingError as exc:
        detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        raise UserError(f"Cannot read the purchases relation {settings.purchases_relation!r} ({detail}). "
                        "Check RECSYS_PURCHASES_RELATION, or unset it to use the loaded table.") from None
    finally:
        engine.dispose()
    if n == 0:
        raise UserError("The database has no purchases yet, so there is nothing to train on. Load some first: "
                        "`recsys load --items ... --purchases ...` or `recsys load --dataset tafeng PATH`. "
                        + SMALLEST_TRAINABLE)
    if n < 2:
        raise UserError("The database has 1 purchase line: too little to train on. " + SMALLEST_TRAINABLE)


def _print_train_result(result: dict) -> None:
    if result.get("cached"):
        click.echo(f"Data and configuration unchanged: version {result['version']} already holds this model "
                   "(use --force to retrain).")
        return
    promoted = {True: "promoted to production", False: "kept as candidate: quality gates failed",
                None: "not promoted"}[result.get("promoted")]
    click.echo(f"Published version {result['version']} ({promoted}).")
    if result.get("report"):
        click.echo(result["report"])
    accounts = result.get("accounts") or {}
    if accounts.get("excluded_lines"):
        reasons = ", ".join(f"{reason}: {n['accounts']}" for reason, n in accounts["by_reason"].items())
        click.echo(f"Left out of training: {accounts['excluded_lines']:,} purchase lines of "
                   f"{accounts['excluded_accounts']:,} accounts that look injected ({reasons}; "
                   "`recsys diagnose` lists them, the database keeps them).")
    how = result.get("execution") or {}
    if how.get("task_runner") == "prefect-dask":
        click.echo(f"On Dask: {how['dask_address']}, {how['dask_workers']} workers; "
                   f"{len(how.get('evaluation_tasks') or [])} evaluation tasks (Prefect's DaskTaskRunner), "
                   f"{how['walk_chunks_on_dask']} walk chunks, {how.get('query_chunks_on_dask', 0)} query chunks, "
                   f"{how.get('index_shards_on_dask', 0)} index shards; workers' peak memory (MB) "
                   f"{how['worker_peak_rss_mb']}.")
    check = result.get("index_check")
    if check:
        click.echo(f"Index: {check['layout']} ({check['factory']} / query {check['query_factory']}), "
                   f"{check['bytes_per_item']} bytes per item, {check['loss']:.2%} below exact search's Recall@20 "
                   f"({check['measured_loss']:.2%} beyond query-sampling noise) "
                   f"on {check['n_queries']['warm']} warm / {check['n_queries']['cold']} cold validation queries.")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.get("stages", {}).items())
    click.echo(f"Stages: {stages}")


@main.command()
@click.option("--nightly", default="0 2 * * *", show_default=True, help="Cron of the train-and-publish deployment.")
@click.option("--hourly", default="0 * * * *", show_default=True, help="Cron of the refresh-new-items deployment.")
@click.option("--weekly", default="0 6 * * 1", show_default=True, help="Cron of the diagnose deployment.")
@click.option("--timezone", default="UTC", show_default=True)
@database_option
@user_errors
def schedule(nightly, hourly, weekly, timezone, database_url):
    """Serve the scheduled deployments (nightly training, hourly new-item refresh,
    weekly diagnosis) from this process against a Prefect server.

    \b
    prefect server start                       # in another terminal
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    recsys schedule
    """
    from recsys.app.scheduling import serve_deployments

    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise UserError("Schedules need a Prefect server: start one with `prefect server start` and set "
                            "PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`).")
    serve_deployments(nightly=nightly, hourly=hourly, weekly=weekly, timezone=timezone, database_url=database_url)


@main.command()
@click.option("--data", type=click.Choice(["synthetic", *DATASETS]), default="synthetic", show_default=True,
              help="The shop to run on: a generated one, or a built-in data set from --data-path.")
@click.option("--data-path", type=click.Path(dir_okay=False, path_type=Path),
              help="File of the built-in data set (default: ../shared/data/...).")
@click.option("--seed", default=0, show_default=True)
@database_option
@user_errors
def demo(data, data_path, seed, database_url):
    """The main job on the embedded default: load a shop and summarise it."""
    from recsys.app.demo import run_demo

    run_demo(data=data, data_path=data_path, seed=seed, database_url=database_url, echo=click.echo)


register_serving_commands(main)
register_data_commands(main)
register_http_commands(main)

if __name__ == "__main__":
    main()
