"""What every `recsys` command shares: one-paragraph errors, the database option, the engine."""
from __future__ import annotations

import functools
import logging
import sys
import traceback

import click
import sqlalchemy as sa

from recsys.config import get_settings
from recsys.errors import UserError
from recsys.ingest.db import get_engine


_DEBUG = {"on": False}


def set_debug(on: bool) -> None:
    """`recsys --debug`: tracebacks are printed (ours and Prefect's) before the one-paragraph error."""
    _DEBUG["on"] = bool(on)


def debug_enabled() -> bool:
    return _DEBUG["on"]


class ExpectedErrorFilter(logging.Filter):
    """Drops Prefect's log records of an expected failure (a `UserError`: a run already in
    progress, an unreachable database, too little data), which the CLI then prints as one
    paragraph. Prefect logs such a failure three times with two tracebacks ("Task run failed
    with exception", "Encountered exception during execution", "Finished in state Failed").
    Any other exception keeps its records and traceback."""

    def __init__(self):
        super().__init__()
        self.seen_expected = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UserError):
            self.seen_expected = True
            return False
        if self.seen_expected and str(record.msg).startswith("Finished in state Failed"):
            return False
        return True


def quiet_expected_flow_errors() -> ExpectedErrorFilter | None:
    """Install ExpectedErrorFilter on Prefect's run loggers (not under --debug)."""
    if debug_enabled():
        return None
    expected = ExpectedErrorFilter()
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(expected)
    return expected


def fail(message: str, code: int = 2) -> None:
    click.echo(click.style("Error: ", fg="red", bold=True) + message, err=True)
    sys.exit(code)


def user_errors(func):
    """Print user mistakes as one paragraph instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            if debug_enabled():
                traceback.print_exc()
            fail(str(exc))
        except sa.exc.OperationalError as exc:
            if debug_enabled():
                traceback.print_exc()
            detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            fail(f"The database failed during the command ({detail}). Nothing was changed by the interrupted "
                  "step; check the server and run the command again.")
        except RuntimeError as exc:
            if "ephemeral Prefect API server" not in str(exc):
                raise
            if debug_enabled():
                traceback.print_exc()
            fail(f"Prefect's temporary server did not start in time ({exc}). Nothing was trained or published. "
                 "Run the command again (the first start is the slowest), or start a server once with "
                 "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api.")
        except KeyboardInterrupt:
            fail("Interrupted. Nothing half-written was kept (each step commits atomically).", code=130)

    return wrapper


def price_as_written(price):
    """A price read back from float32 (a bundle's item table) as the shop wrote it: 12.98, not
    12.979999542236328 (the shortest decimal that is the same float32)."""
    import math

    import numpy as np

    if price is None or (isinstance(price, float) and math.isnan(price)):
        return None
    return float(str(np.float32(price)))


def database_option(func):
    return click.option("--database-url", envvar="RECSYS_DATABASE_URL", default=None,
                        help="SQLAlchemy URL of your Postgres (postgresql+psycopg2://...). "
                             "Default: $RECSYS_DATABASE_URL, else the embedded Postgres under $RECSYS_HOME.")(func)


def engine_for(database_url: str | None):
    return get_engine(get_settings(database_url=database_url))
