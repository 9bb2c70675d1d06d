"""Commands of the `recsys` CLI for other stacks: `serve` (the HTTP API) and `export` (a Postgres table).

`register(main)` adds them to the click group of recsys.app.cli.
"""
from __future__ import annotations

import click

from recsys.app.common import database_option, engine_for, user_errors
from recsys.errors import UserError


def register(main: click.Group) -> None:
    """Add `serve` and `export` to the `recsys` group."""
    @main.command()
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on. Anything but loopback needs RECSYS_API_KEYS (or --insecure).")
    @click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
    @click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
                  help="Processes; each loads the version and follows the alias itself.")
    @click.option("--alias", default="production", show_default=True, type=click.Choice(["production", "candidate"]),
                  help="The registry alias served and followed.")
    @click.option("--bundle", "bundle_path", type=click.Path(file_okay=False, exists=True),
                  help="Serve this bundle folder instead of an alias (never reloads).")
    @click.option("--refresh-interval", default=5.0, show_default=True, type=click.FloatRange(min=0.05),
                  help="Seconds between checks of the alias (and retries while there is no version).")
    @click.option("--search-threads", default=1, show_default=True, type=click.IntRange(min=0),
                  help="FAISS threads per query (0: all cores). One keeps the latency tail short when many "
                       "requests arrive at once.")
    @click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
    @click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
    @database_option
    @user_errors
    def serve(host, port, workers, alias, bundle_path, refresh_interval, search_threads, insecure, access_log,
              database_url):
        """The HTTP API over the production version (FastAPI on uvicorn).

        \b
        recsys serve                       # http://127.0.0.1:8000, docs at /docs
        curl 'http://127.0.0.1:8000/v1/items/ITEM_ID/similar?k=10&in_stock_only=true'

        With RECSYS_API_KEYS=key1,key2 set, every /v1 request needs one of them
        (header `X-API-Key: key1` or `Authorization: Bearer key1`).
        /healthz answers while the process runs; /readyz is 200 once a verified
        version is loaded (it keeps retrying while there is none).
        """
        from recsys.config import get_settings
        from recsys.ingest.db import database_url as resolve_url
        from recsys.serving.http import ServeConfig
        from recsys.serving.http_keys import api_keys_from_env, check_bind
        from recsys.serving.http_server import serve as run_server

        keys = api_keys_from_env()
        check_bind(host, keys, insecure)  # before anything starts
        # resolved once here: the workers must not each start the embedded Postgres
        url = None if bundle_path else resolve_url(get_settings(database_url=database_url))
        config = ServeConfig(alias=alias, database_url=url, bundle=bundle_path, refresh_interval_s=refresh_interval,
                             search_threads=search_threads)
        what = f"bundle {bundle_path}" if bundle_path else f"the {alias} alias"
        click.echo(f"Serving {what} on http://{host}:{port} ({workers} worker(s); API keys: "
                   f"{'required' if keys else 'none'}). OpenAPI docs: http://{host}:{port}/docs", err=True)
        run_server(config, host, port, workers, insecure=insecure, access_log=access_log)

    @main.command()
    @click.option("--table", required=True, help="The table to (re)place, e.g. item_neighbours.")
    @click.option("--schema", default=None, help="Its schema (default: the connection's current schema).")
    @click.option("--k", "k", default=50, show_default=True, type=click.IntRange(min=1), help="Neighbours per item.")
    @click.option("--alias", default="production", show_default=True, type=click.Choice(["production", "candidate"]))
    @click.option("--force", is_flag=True, help="Rewrite the table even if it already holds this version's top k.")
    @database_option
    @user_errors
    def export(table, schema, k, alias, force, database_url):
        """Every item's top k neighbours into a Postgres table, swapped atomically.

        \b
        recsys export --table item_neighbours --k 50
        SELECT neighbor_id, score FROM item_neighbours WHERE item_id = '...' ORDER BY rank;

        Columns: item_id, rank (1-based), neighbor_id, score, version; primary key
        (item_id, rank). Written with COPY into a new table that replaces the old
        one in the same transaction: readers see the old rows or the new ones,
        never a mix. Rerunning for the same version changes nothing.
        """
        from recsys.serving.export import export_neighbours

        if not table.strip():
            raise UserError("--table needs a name.")
        report = export_neighbours(engine_for(database_url), table, k=k, alias=alias, schema=schema, force=force)
        if report.unchanged:
            click.echo(f"{report.table} already holds version {report.version} (top {report.k}, {report.rows:,} "
                       "rows): nothing changed.")
            return
        click.echo(f"{report.table}: {report.rows:,} rows (top {report.k} of {report.items:,} items) of version "
                   f"{report.version}, swapped in atomically in {report.seconds:.1f} s.")
        if report.skipped:
            shown = ", ".join(report.skipped[:5]) + (" ..." if len(report.skipped) > 5 else "")
            click.echo(f"  {len(report.skipped):,} item(s) this model cannot answer were left out "
                       f"(no purchases at training time and no side features): {shown}")
