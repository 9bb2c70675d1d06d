"""Shared fixtures: one embedded Postgres for the whole run, a clean schema per test."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports prefect or recsys settings.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="recsys-test-home-"))
os.environ["RECSYS_HOME"] = str(_SESSION_HOME)
os.environ.pop("RECSYS_DATABASE_URL", None)
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
TAFENG = SHARED_DATA / "tafeng" / "ta_feng.csv.zip"
ONLINE_RETAIL = SHARED_DATA / "online_retail" / "online_retail.parquet"


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def pg_url(session_home) -> str:
    """URL of the embedded Postgres the tests share (started once)."""
    from recsys.config import get_settings
    from recsys.ingest.db import embedded_url

    return embedded_url(get_settings(home=session_home))


@pytest.fixture()
def engine(pg_url):
    """An engine on a freshly emptied, migrated database."""
    import sqlalchemy as sa

    from recsys.ingest.db import get_engine
    from recsys.ingest.migrate import migrate

    eng = get_engine(url=pg_url)
    with eng.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture()
def cli(pg_url, monkeypatch):
    """Run the CLI in-process against the test database; returns (exit_code, output)."""
    from click.testing import CliRunner

    from recsys.app.cli import main

    monkeypatch.setenv("RECSYS_DATABASE_URL", pg_url)
    runner = CliRunner()

    def run(*args: str):
        result = runner.invoke(main, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.output

    return run


def table_counts(engine) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("items", "purchases", "load_rejects", "side_features")}


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
