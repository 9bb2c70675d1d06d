"""What every `recsys` command shares: one-paragraph errors, the database option, the engine."""
from __future__ import annotations

import functools
import sys

import click
import sqlalchemy as sa

from recsys.config import get_settings
from recsys.errors import UserError
from recsys.ingest.db import get_engine


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
            fail(str(exc))
        except sa.exc.OperationalError as exc:
            detail = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            fail(f"The database failed during the command ({detail}). Nothing was changed by the interrupted "
                  "step; check the server and run the command again.")
        except KeyboardInterrupt:
            fail("Interrupted. Nothing half-written was kept (each step commits atomically).", code=130)

    return wrapper


def database_option(func):
    return click.option("--database-url", envvar="RECSYS_DATABASE_URL", default=None,
                        help="SQLAlchemy URL of your Postgres (postgresql+psycopg2://...). "
                             "Default: $RECSYS_DATABASE_URL, else the embedded Postgres under $RECSYS_HOME.")(func)


def engine_for(database_url: str | None):
    return get_engine(get_settings(database_url=database_url))
