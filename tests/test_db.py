"""Configuration, the embedded Postgres, the user's Postgres by URL, and migrations."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from recsys.config import get_settings
from recsys.ingest.db import database_url, get_engine, normalise_url
from recsys.errors import DatabaseUnavailableError, UserError
from recsys.ingest.migrate import available_migrations, migrate


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECSYS_ARTIFACT_ROOT", str(tmp_path / "bundles"))
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql+psycopg2://u:p@db:5432/shop")
    settings = get_settings()
    assert settings.home == tmp_path / "home"
    assert settings.resolved_artifact_root == tmp_path / "bundles"
    assert settings.database_url == "postgresql+psycopg2://u:p@db:5432/shop"
    monkeypatch.delenv("RECSYS_ARTIFACT_ROOT")
    assert get_settings().resolved_artifact_root == tmp_path / "home" / "artifacts"
    # explicit values (command-line options) win over the environment
    assert get_settings(database_url="postgresql+psycopg2://x@y/z").database_url == "postgresql+psycopg2://x@y/z"


def test_plain_postgres_urls_are_pinned_to_psycopg2():
    assert normalise_url("postgresql://u:p@h/d") == "postgresql+psycopg2://u:p@h/d"
    assert normalise_url("postgres://u@h:5433/d") == "postgresql+psycopg2://u@h:5433/d"
    assert normalise_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    with pytest.raises(UserError, match="PostgreSQL"):
        normalise_url("mysql://u@h/d")
    with pytest.raises(UserError, match="not a database URL"):
        normalise_url("not a url")


def test_embedded_server_starts_under_home_and_is_reused(session_home, pg_url):
    settings = get_settings(home=session_home)
    assert (session_home / "pgdata" / "PG_VERSION").exists()
    # a later command finds the same running server instead of starting another
    assert database_url(settings) == pg_url
    engine = get_engine(url=pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_database()")).scalar() == "recsys"


def test_a_database_url_is_used_instead_of_the_embedded_server(pg_url, tmp_path, monkeypatch):
    """With RECSYS_DATABASE_URL set, nothing is started under RECSYS_HOME."""
    other_home = tmp_path / "unused-home"
    monkeypatch.setenv("RECSYS_HOME", str(other_home))
    monkeypatch.setenv("RECSYS_DATABASE_URL", pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    engine = get_engine()
    assert engine.url.drivername == "postgresql+psycopg2"
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('items') IS NOT NULL")).scalar()
    assert not (other_home / "pgdata").exists()


def test_a_database_that_is_down_gives_a_clear_error():
    with pytest.raises(DatabaseUnavailableError) as info:
        get_engine(url="postgresql+psycopg2://nobody:secret@127.0.0.1:1/shop")
    message = str(info.value)
    assert "cannot be reached" in message and "RECSYS_DATABASE_URL" in message
    assert "secret" not in message  # passwords never printed


def test_a_wrong_password_gives_a_clear_error(pg_url):
    admin = get_engine(url=pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text("DROP ROLE IF EXISTS recsys_pw_test"))
        conn.execute(sa.text("CREATE ROLE recsys_pw_test LOGIN PASSWORD 'right-password'"))
        hba = conn.execute(sa.text("SHOW hba_file")).scalar()
    # the embedded server trusts local connections; demand a password for this role
    with open(hba) as fh:
        original = fh.read()
    rule = "local all recsys_pw_test scram-sha-256\n"
    try:
        with open(hba, "w") as fh:
            fh.write(rule + original)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))
        url = sa.engine.make_url(pg_url).set(username="recsys_pw_test", password="wrong-password")
        with pytest.raises(DatabaseUnavailableError) as info:
            get_engine(url=url.render_as_string(hide_password=False))
        assert "password" in str(info.value) and "wrong-password" not in str(info.value)
    finally:
        with open(hba, "w") as fh:
            fh.write(original)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))


def test_migrations_apply_once_and_are_recorded(engine):
    names = [m.name for m in available_migrations()]
    with engine.connect() as conn:
        recorded = [r[0] for r in conn.execute(sa.text("SELECT name FROM schema_migrations ORDER BY version"))]
    assert recorded == names
    assert migrate(engine) == []


def test_concurrent_migrations_serialise(pg_url):
    engine = get_engine(url=pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    results, errors = [], []

    def run():
        try:
            results.append(migrate(get_engine(url=pg_url)))
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(len(r) for r in results) == [0, 0, 0, len(available_migrations())]


def test_an_edited_migration_is_refused(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '001'"))
    with pytest.raises(UserError, match="immutable"):
        migrate(engine)
