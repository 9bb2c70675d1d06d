"""Issue 11: `recsys train` and the smaller commands fail in one clear paragraph, never a traceback.

The subprocess tests read what a person sees in the terminal (Prefect logs to the real
stderr, which an in-process runner does not capture).
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import REPO
from recsys.errors import DatabaseUnavailableError, UserError

RECSYS = [sys.executable, "-m", "recsys.app.cli"]
UNREACHABLE = "postgresql+psycopg2://shop:pw@127.0.0.1:1/shop"


def run_cli(*args, env=None, timeout=240):
    full_env = {**os.environ, **(env or {})}
    started = time.perf_counter()
    done = subprocess.run([*RECSYS, *map(str, args)], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - started


def empty_schema(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- 8. train on a fresh home, an empty database, too little data --------------------------------

def test_train_on_a_fresh_database_applies_the_migrations_and_says_what_is_missing(cli, engine):
    empty_schema(engine)
    code, out = cli("train")
    assert code == 2 and out.count("Error: ") == 1, out
    assert "no purchases yet" in out and "recsys load" in out and "smallest trainable data" in out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('items') IS NOT NULL")).scalar()


def test_train_on_one_purchase(cli, engine, tmp_path):
    cli("load", "--items", write(tmp_path, "i.csv", "item_id,category\nA,x\n"),
        "--purchases", write(tmp_path, "p.csv", "user_id,item_id,purchased_at\nu1,A,2024-01-01\n"))
    code, out = cli("train")
    assert code == 2 and "1 purchase line" in out and "smallest trainable data" in out, out


def test_train_without_co_purchases(cli, engine, tmp_path, prefect_harness):
    cli("load", "--items", write(tmp_path, "i.csv", "item_id,category\nA,x\nB,y\nC,z\n"),
        "--purchases", write(tmp_path, "p.csv", "user_id,item_id,purchased_at\nu1,A,2024-01-01\n"
                                                "u2,B,2024-01-02\nu3,C,2024-01-03\n"))
    code, out = cli("train")
    assert code == 2, out
    assert "Not enough data to train: 3 purchase lines of 3 items by 3 users" in out
    assert "holding two different items" in out


# --- 9. no Prefect traceback before the error ------------------------------------------------------

def test_train_against_an_unreachable_database_is_one_paragraph(tmp_path):
    code, out, err, seconds = run_cli("train", env={"RECSYS_DATABASE_URL": UNREACHABLE})
    assert code == 2
    assert "Traceback" not in err + out and err.count("Error: ") == 1
    assert "cannot be reached" in err
    assert seconds < 15  # before the flow (and its temporary Prefect server) starts
    code, out, err, _ = run_cli("--debug", "train", env={"RECSYS_DATABASE_URL": UNREACHABLE})
    assert code == 2 and "Traceback" in err and "Error: " in err


def test_a_second_concurrent_train_is_one_paragraph(engine, pg_url, tmp_path, prefect_harness):
    """The lock held by another run: the flow stops at once; Prefect's traceback is not shown."""
    from prefect.settings import PREFECT_API_URL

    from recsys.serving.runlock import PUBLISH_LOCK_KEY

    items = write(tmp_path, "i.csv", "item_id,category\nA,x\nB,y\n")
    purchases = write(tmp_path, "p.csv", "user_id,item_id,purchased_at,order_id\nu1,A,2024-01-01,o1\n"
                                         "u1,B,2024-01-01,o1\nu2,A,2024-01-02,o2\nu2,B,2024-01-02,o2\n")
    env = {"RECSYS_DATABASE_URL": pg_url, "PREFECT_API_URL": PREFECT_API_URL.value()}
    assert run_cli("load", "--items", items, "--purchases", purchases, env=env)[0] == 0
    with engine.connect() as holder:
        assert holder.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": PUBLISH_LOCK_KEY}).scalar()
        holder.commit()
        try:
            code, out, err, _ = run_cli("train", env=env)
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock_all()"))
            holder.commit()
    assert code == 2, err
    assert "Traceback" not in err + out, err
    assert err.count("Error: ") == 1 and "already running" in err
    assert "Finished in state Failed" not in err


def test_the_expected_error_filter_drops_only_user_errors():
    from recsys.app.common import ExpectedErrorFilter

    expected = ExpectedErrorFilter()

    def record(exc, msg="Encountered exception during execution"):
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, msg, None, info)

    assert expected.filter(record(RuntimeError("a bug"))) is True  # a real bug keeps its traceback
    assert expected.filter(record(None, "Finished in state Failed('a bug')")) is True
    assert expected.filter(record(DatabaseUnavailableError("down"))) is False
    assert expected.filter(record(None, "Finished in state Failed('down')")) is False
    assert expected.filter(record(None, "Beginning flow run")) is True


def test_the_publish_lock_retries_an_unreachable_database_with_backoff():
    from recsys.config import get_settings
    from recsys.serving.runlock import _connect_with_backoff

    sleeps = []
    with pytest.raises(DatabaseUnavailableError, match="cannot be reached"):
        _connect_with_backoff(get_settings(database_url=UNREACHABLE), None, retries=3, backoff_s=2.0,
                              sleep=sleeps.append)
    assert sleeps == [2.0, 4.0, 8.0]


# --- --deterministic ---------------------------------------------------------------------------

def test_deterministic_reruns_publish_identical_models(cli, engine, tmp_path, prefect_harness, monkeypatch):
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.serving.registry import list_versions

    monkeypatch.setenv("RECSYS_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    shop = generate_shop(ShopConfig(n_items=200, n_users=150, n_baskets=900))
    items, purchases = shop.write_csv(tmp_path / "shop")
    assert cli("load", "--items", items, "--purchases", purchases)[0] == 0
    args = ["train", "--deterministic", "--force", "--dim", "16", "--epochs", "2", "--max-queries", "300"]
    for _ in range(2):
        code, out = cli(*args)
        assert code == 0, out
    first, second = list_versions(engine)[:2]
    assert first.version != second.version

    def without_timings(value):
        if isinstance(value, dict):
            return {k: without_timings(v) for k, v in value.items()
                    if not (k.endswith("seconds") or k.endswith("_s") or k.endswith("_mb") or k == "stages")}
        if isinstance(value, list):
            return [without_timings(v) for v in value]
        return value

    def contents(info):
        """Every file's checksum; index.json (which records its build time) by value."""
        root = Path(info.path)
        manifest = json.loads((root / "manifest.json").read_text())
        return {name: (without_timings(json.loads((root / name).read_text())) if name.endswith("index.json")
                       else entry["sha256"]) for name, entry in manifest["files"].items()}

    assert contents(first) == contents(second)  # bit-identical vectors, index codes and tables
    assert without_timings(first.metrics) == without_timings(second.metrics)
    assert first.recall_at("warm") == second.recall_at("warm") and first.recall_at("warm") > 0


# --- 10. the smaller ones -------------------------------------------------------------------------

@pytest.fixture()
def bundle_client(tmp_path):
    from test_bundle import INDEX_CLASS, make_parts

    from recsys.serving import bundle as B
    from recsys.serving.client import Client

    path = B.write_bundle(tmp_path, "20260101T000000Z-00000001", make_parts(n_items=60, n_cold=10))
    return Client.open(path, index_class=INDEX_CLASS), path


def test_client_arguments_are_checked(bundle_client):
    client, _ = bundle_client
    known = client._snapshot.item_ids[20]
    with pytest.raises(ValueError, match="price_ratio must be a pair"):
        client.similar(known, price_ratio=3)
    with pytest.raises(TypeError, match="list of item ids"):
        client.similar_batch(known)
    with pytest.raises(ValueError, match="finite number"):
        client.similar_to_new_item(category=client._snapshot.category_names[20], price=float("nan"))
    with pytest.raises(ValueError, match="finite number"):
        client.similar_to_new_item(category=client._snapshot.category_names[20], price=float("inf"))


def test_short_results_say_why(bundle_client):
    client, _ = bundle_client
    known = client._snapshot.item_ids[20]
    none = client.similar(known, k=5, min_price=1e9)
    assert none == [] and "match the filters" in none.reason
    everything = client.similar(known, k=500)
    assert 0 < len(everything) < 500
    assert "filters" not in everything.reason and "trained vector" in everything.reason
    assert client.similar(known, k=5).reason is None
    (batch,) = client.similar_batch([known], k=5, min_price=1e9)
    assert "match the filters" in batch.reason


def test_prices_are_printed_as_written(cli, bundle_client):
    """The bundle stores prices as float32; `recsys similar --json` and the demo print 12.98, not 12.979999542236328."""
    from recsys.app.common import price_as_written

    assert price_as_written(float(np.float32(12.98))) == 12.98 and price_as_written(None) is None
    assert price_as_written(float("nan")) is None
    client, path = bundle_client
    code, out = cli("similar", client._snapshot.item_ids[20], "-k", "20", "--bundle", path, "--json")
    assert code == 0, out
    prices = [n["price"] for n in json.loads(out)["neighbors"] if n["price"] is not None]
    assert prices
    for price in prices:
        assert repr(price) == str(np.float32(price))


def test_cli_similar_without_filters_does_not_blame_filters(cli, bundle_client):
    client, path = bundle_client
    code, out = cli("similar", client._snapshot.item_ids[20], "-k", "500", "--bundle", path)
    assert code == 0, out
    assert "match the filters" not in out and "trained vector" in out
    code, out = cli("similar", client._snapshot.item_ids[20], "-k", "5", "--bundle", path, "--min-price", "1e9")
    assert code == 0 and "match the filters" in out


def test_versions_show_a_dash_for_a_segment_without_queries(cli, engine, tmp_path):
    from test_bundle import make_parts

    from recsys.serving import registry as R

    metrics = {"warm": {"recall": {"20": 0.25}, "n_queries": 40}, "cold": {"recall": {"20": 0.0}, "n_queries": 0}}
    R.publish(engine, tmp_path, make_parts(n_items=40, metrics=metrics), "20260101T000000Z-00000001")
    code, out = cli("versions")
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("20260101T000000Z-00000001"))
    assert "0.2500" in line and "0.0000" not in line and " - " in line


# --- db: stop and a wrong role ---------------------------------------------------------------------

def test_db_stop_prints_one_line(tmp_path):
    home = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": ""}
    code, out, err, _ = run_cli("db", "status", env=home)
    assert code == 0, err
    code, out, err, _ = run_cli("db", "stop", env=home)
    assert code == 0 and out.startswith("Stopped the embedded Postgres"), out + err
    assert "Failed" not in out + err and "pg_ctl" not in out + err
    assert not (tmp_path / "home" / "pgdata" / "postmaster.pid").exists()
    code, out, err, _ = run_cli("db", "stop", env=home)
    assert code == 0 and "is not running" in out


def test_a_wrong_role_is_named_as_such(pg_url):
    from recsys.ingest.db import get_engine

    url = sa.engine.make_url(pg_url).set(username="no_such_role_11")
    with pytest.raises(DatabaseUnavailableError) as info:
        get_engine(url=url.render_as_string(hide_password=False))
    message = str(info.value)
    assert "no such role" in message and "database does not exist" not in message
    assert isinstance(info.value, UserError)
