"""`recsys export`: every item's top k in a Postgres table, COPY in one transaction, swapped atomically."""
from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from recsys.errors import UserError
from recsys.serving import registry as R
from recsys.serving.client import Client, NoVersionError
from recsys.serving.export import export_neighbours
from test_bundle import INDEX_CLASS, make_parts

V1, V2 = "20260101T000000Z-00000001", "20260102T000000Z-00000002"


@pytest.fixture()
def published(engine, tmp_path):
    R.publish(engine, tmp_path, make_parts(n_items=80, n_cold=5, seed=1), V1, alias="production")
    R.publish(engine, tmp_path, make_parts(n_items=90, n_cold=5, seed=2), V2, alias=None)
    return engine


def rows(engine, table="item_neighbours", schema="public"):
    with engine.connect() as conn:
        return conn.execute(sa.text(f'SELECT item_id, rank, neighbor_id, score, version FROM "{schema}"."{table}" '
                                    "ORDER BY item_id, rank")).fetchall()


def table_oid(engine, table="item_neighbours"):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": table}).scalar()


def expected(engine, k):
    client = Client.from_registry(engine=engine, refresh_interval_s=None, index_class=INDEX_CLASS)
    ids = client._snapshot.item_ids
    return client.version, {i: [(n.item_id, n.score) for n in client.similar(i, k)] for i in ids}


def test_export_writes_every_items_top_k(published):
    report = export_neighbours(published, "item_neighbours", k=5, index_class=INDEX_CLASS)
    version, want = expected(published, 5)
    got = rows(published)
    assert report.version == version == V1 and not report.unchanged and report.items == 80
    assert report.rows == len(got) == sum(len(v) for v in want.values()) == 80 * 5
    by_item: dict[str, list] = {}
    for item_id, rank, neighbor, score, row_version in got:
        assert row_version == V1
        by_item.setdefault(item_id, []).append((rank, neighbor, score))
    for item_id, neighbors in want.items():
        ranks = by_item[item_id]
        assert [r for r, _, _ in ranks] == list(range(1, len(neighbors) + 1))
        assert [n for _, n, _ in ranks] == [n for n, _ in neighbors]
        assert [s for _, _, s in ranks] == pytest.approx([s for _, s in neighbors], rel=1e-5, abs=1e-6)
    with published.connect() as conn:
        key = conn.execute(sa.text("SELECT conname FROM pg_constraint WHERE conrelid = 'item_neighbours'::regclass "
                                   "AND contype = 'p'")).scalar()
        leftovers = conn.execute(sa.text("SELECT count(*) FROM pg_class WHERE relname LIKE 'item_neighbours__new%'")
                                 ).scalar()
    assert key == "item_neighbours_pkey" and leftovers == 0


def test_rerunning_for_the_same_version_changes_nothing(published):
    first = export_neighbours(published, "item_neighbours", k=4, index_class=INDEX_CLASS)
    oid, before = table_oid(published), rows(published)
    again = export_neighbours(published, "item_neighbours", k=4, index_class=INDEX_CLASS)
    assert again.unchanged and again.rows == first.rows and again.version == V1
    assert table_oid(published) == oid and rows(published) == before
    other_k = export_neighbours(published, "item_neighbours", k=3, index_class=INDEX_CLASS)  # another k: rewritten
    assert not other_k.unchanged and table_oid(published) != oid and len(rows(published)) == 80 * 3


def test_a_moved_alias_replaces_the_table_and_keeps_its_grants(published):
    export_neighbours(published, "item_neighbours", k=3, index_class=INDEX_CLASS)
    with published.begin() as conn:
        conn.execute(sa.text("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shop_web') "
                             "THEN CREATE ROLE shop_web; END IF; END $$"))
        conn.execute(sa.text("GRANT SELECT ON item_neighbours TO shop_web"))
    R.move_alias(published, "production", V2)
    report = export_neighbours(published, "item_neighbours", k=3, index_class=INDEX_CLASS)
    got = rows(published)
    assert report.version == V2 and {r.version for r in got} == {V2} and len(got) == 90 * 3
    with published.connect() as conn:
        assert conn.execute(sa.text("SELECT has_table_privilege('shop_web', 'item_neighbours', 'SELECT')")).scalar()


def test_a_reader_never_sees_a_half_table_while_it_is_replaced(published):
    """A reader queries the table in a loop while it is replaced, version after version."""
    export_neighbours(published, "item_neighbours", k=5, index_class=INDEX_CLASS)
    complete = {(80 * 5, V1), (90 * 5, V2)}
    seen, errors, stop = [], [], threading.Event()

    def reader():
        reader_engine = sa.create_engine(published.url, isolation_level="AUTOCOMMIT")
        try:
            with reader_engine.connect() as conn:
                while not stop.is_set():
                    count, versions, version = conn.execute(sa.text(
                        "SELECT count(*), count(DISTINCT version), min(version) FROM item_neighbours")).one()
                    seen.append((count, version) if versions == 1 else ("mixed", count))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            reader_engine.dispose()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(4):
            R.move_alias(published, "production", V2 if n % 2 == 0 else V1)
            export_neighbours(published, "item_neighbours", k=5, index_class=INDEX_CLASS)
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert len(seen) > 10 and set(seen) <= complete, set(seen) - complete
    assert {v for _, v in seen} == {V1, V2}  # the reader saw both tables, each whole


def test_a_table_recsys_did_not_write_is_left_alone(published):
    with published.begin() as conn:
        conn.execute(sa.text("CREATE TABLE mine (item_id text, rank int)"))
        conn.execute(sa.text("INSERT INTO mine VALUES ('a', 1)"))
    with pytest.raises(UserError, match="not written by `recsys export`"):
        export_neighbours(published, "mine", k=3, index_class=INDEX_CLASS)
    with published.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM mine")).scalar() == 1


def test_a_view_on_the_table_stops_the_swap_with_a_clear_error(published):
    export_neighbours(published, "item_neighbours", k=2, index_class=INDEX_CLASS)
    with published.begin() as conn:
        conn.execute(sa.text("CREATE VIEW top1 AS SELECT * FROM item_neighbours WHERE rank = 1"))
    R.move_alias(published, "production", V2)
    with pytest.raises(UserError, match="depend"):
        export_neighbours(published, "item_neighbours", k=2, index_class=INDEX_CLASS)
    assert {r.version for r in rows(published)} == {V1}  # nothing changed


def test_no_version_is_a_clear_error(engine):
    with pytest.raises(NoVersionError, match="recsys train"):
        export_neighbours(engine, "item_neighbours")


def test_cli_export_with_a_schema(published, cli):
    code, out = cli("export", "--table", "neighbours", "--schema", "recs", "--k", "3")
    assert code == 0 and "recs.neighbours: 240 rows (top 3 of 80 items)" in out and V1 in out, out
    assert len(rows(published, "neighbours", "recs")) == 240
    code, out = cli("export", "--table", "neighbours", "--schema", "recs", "--k", "3")
    assert code == 0 and "nothing changed" in out
    code, out = cli("export", "--table", "neighbours", "--schema", "recs", "--k", "0")
    assert code == 2
