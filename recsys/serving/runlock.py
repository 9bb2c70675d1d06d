"""One train-and-publish run per database at a time (a Postgres advisory lock).

The lock is held on a dedicated connection for the whole run, so it is released
by Postgres itself if the process dies; a second run waits up to `wait_s`
seconds and then exits with a clear message. An unreachable database is retried
with exponential backoff before the run gives up (the first thing a run does is
take this lock, so this is where a scheduled run meets a database that is down).
"""
from __future__ import annotations

import contextlib
import logging
import time

import sqlalchemy as sa

from recsys.errors import DatabaseUnavailableError, UserError
from recsys.ingest.db import check_connection, get_engine

log = logging.getLogger(__name__)

PUBLISH_LOCK_KEY = 0x5EC5_0003


class RunInProgressError(UserError):
    """Another run holds the publish lock."""


def _connect_with_backoff(settings, engine, retries: int, backoff_s: float, sleep=time.sleep):
    """An engine that answers; an unreachable server is retried `retries` times after
    backoff_s, 2*backoff_s, 4*backoff_s ... seconds (wrong credentials are not retried)."""
    for attempt in range(retries + 1):
        try:
            if engine is None:
                return get_engine(settings)
            check_connection(engine)
            return engine
        except DatabaseUnavailableError as exc:
            if attempt == retries or "cannot be reached" not in str(exc):
                raise
            delay = backoff_s * 2 ** attempt
            log.warning("database unreachable (attempt %d of %d), retrying in %.0f s", attempt + 1, retries + 1,
                        delay)
            sleep(delay)


@contextlib.contextmanager
def publish_lock(settings, wait_s: float = 0.0, poll_s: float = 1.0, engine=None, connect_retries: int = 3,
                 backoff_s: float = 2.0):
    engine = _connect_with_backoff(settings, engine, connect_retries, backoff_s)
    conn = engine.connect()
    try:
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PUBLISH_LOCK_KEY}).scalar()
            conn.commit()
            if got:
                break
            if time.monotonic() >= deadline:
                holder = conn.execute(sa.text(
                    "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.objid = :k AND l.granted LIMIT 1"), {"k": PUBLISH_LOCK_KEY & 0xFFFFFFFF}).first()
                conn.commit()
                who = f" (server pid {holder.pid}, connected {holder.backend_start:%Y-%m-%d %H:%M:%S})" if holder else ""
                raise RunInProgressError(
                    f"Another train-and-publish run is already running against this database{who}. "
                    f"This run stopped without changing anything. Wait for it to finish, or pass "
                    f"wait_for_lock_s (recsys train --wait-for-lock 30m) to queue behind it.")
            time.sleep(max(0.01, min(poll_s, deadline - time.monotonic())))
        yield
    finally:
        try:
            conn.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            conn.commit()
        finally:
            conn.close()
