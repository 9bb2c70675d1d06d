"""`recsys load`: the generic import, idempotence, and every kind of bad input."""
from __future__ import annotations


import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import table_counts
from recsys.ingest.load import load_frames
from recsys.ingest.loaders.generic import read_frames

ITEMS = """item_id,category,brand,price,title,in_stock,created_at,color,material
a,shoes,acme,59.0,Runner,true,2024-01-01T00:00:00Z,red,leather
b,shoes,acme,65.5,Trail,false,2024-01-02,blue,
c,socks,,4.0,Sock,,2024-01-03T10:00:00+02:00,red,cotton
d,hats,zeta,,Cap,1,,green,wool
"""
PURCHASES = """user_id,item_id,purchased_at,order_id,quantity,unit_price
u1,a,2024-02-01T10:00:00Z,o1,1,59.0
u1,c,2024-02-01T10:00:00Z,o1,2,4.0
u2,b,2024-02-02T11:00:00Z,,1,
u2,b,2024-02-02T11:00:00Z,,2,60
u3,d,2024-02-03 09:30:00,o3,,
"""


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.fixture()
def good_files(tmp_path):
    return write(tmp_path, "items.csv", ITEMS), write(tmp_path, "purchases.csv", PURCHASES)


def test_load_then_reload_changes_nothing(engine, good_files):
    items, purchases = good_files
    first = load_frames(engine, read_frames(items, purchases, side_features=["color"]))
    assert (first.items_inserted, first.purchases_inserted, first.rejected_rows) == (4, 5, 0)
    assert first.accounted_rows == first.input_rows == 9
    before = table_counts(engine)
    with engine.connect() as conn:
        stamps = conn.execute(sa.text("SELECT item_id, updated_at FROM items ORDER BY 1")).fetchall()
    second = load_frames(engine, read_frames(items, purchases, side_features=["color"]))
    assert (second.items_inserted, second.items_updated, second.items_unchanged) == (0, 0, 4)
    assert (second.purchases_inserted, second.purchases_already_present) == (0, 5)
    assert table_counts(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT item_id, updated_at FROM items ORDER BY 1")).fetchall() == stamps
        row = conn.execute(sa.text("SELECT brand, price, in_stock, attributes, created_at FROM items "
                                   "WHERE item_id = 'c'")).one()
        assert row.brand is None and float(row.price) == 4.0 and row.in_stock is True
        assert row.attributes == {"color": "red", "material": "cotton"}
        assert row.created_at.isoformat() == "2024-01-03T08:00:00+00:00"
        assert conn.execute(sa.text("SELECT name FROM side_features")).scalars().all() == ["color"]
        # two lines of the same item in one session are kept apart by line_no
        lines = conn.execute(sa.text("SELECT line_no, quantity FROM purchases WHERE user_id = 'u2' "
                                     "ORDER BY line_no")).fetchall()
        assert [tuple(r) for r in lines] == [(0, 1), (1, 2)]
        assert conn.execute(sa.text("SELECT quantity FROM purchases WHERE user_id = 'u3'")).scalar() == 1


def test_changed_items_are_updated(engine, good_files, tmp_path):
    items, purchases = good_files
    load_frames(engine, read_frames(items, purchases))
    changed = write(tmp_path, "items2.csv", ITEMS.replace("59.0,Runner", "49.0,Runner"))
    report = load_frames(engine, read_frames(changed, None))
    assert (report.items_inserted, report.items_updated, report.items_unchanged) == (0, 1, 3)


def test_cli_load_prints_counts(cli, engine, good_files):
    items, purchases = good_files
    code, out = cli("load", "--items", items, "--purchases", purchases, "--side-feature", "color")
    assert code == 0, out
    assert "4 new" in out and "5 new" in out and "accounted: 9 of 9 input rows" in out


# --- bad input: each a clear one-paragraph message, no traceback, database unchanged ----------------

def assert_clean_failure(cli, engine, args, *expected):
    before = table_counts(engine)
    code, out = cli(*args)
    assert code == 2, out
    assert "Traceback" not in out
    assert "Error: " in out and out.count("Error: ") == 1
    for text in expected:
        assert text in out, out
    assert table_counts(engine) == before
    return out


def test_missing_required_column(cli, engine, tmp_path, good_files):
    items = write(tmp_path, "items.csv", ITEMS.replace("category", "kind"))
    assert_clean_failure(cli, engine, ["load", "--items", items, "--purchases", good_files[1]],
                         "items.csv", "missing the required column 'category'", "Found columns")


def test_file_that_does_not_exist(cli, engine, tmp_path, good_files):
    assert_clean_failure(cli, engine, ["load", "--items", tmp_path / "nope.csv", "--purchases", good_files[1]],
                         "nope.csv", "does not exist")


def test_empty_file(cli, engine, tmp_path, good_files):
    empty = write(tmp_path, "purchases.csv", "")
    assert_clean_failure(cli, engine, ["load", "--items", good_files[0], "--purchases", empty],
                         "purchases.csv", "empty")
    header_only = write(tmp_path, "purchases2.csv", "user_id,item_id,purchased_at\n")
    assert_clean_failure(cli, engine, ["load", "--items", good_files[0], "--purchases", header_only],
                         "purchases2.csv", "no data rows")


def test_non_utf8_bytes(cli, engine, tmp_path, good_files):
    raw = ITEMS.encode("utf-8").replace(b"Sock", b"Socke \xe4\xf6")
    items = write(tmp_path, "items.csv", raw)
    out = assert_clean_failure(cli, engine, ["load", "--items", items, "--purchases", good_files[1]],
                               "items.csv", "not valid utf-8", "line 4", "--encoding")
    assert "row 3" in out


def test_unknown_extension(cli, engine, tmp_path, good_files):
    odd = write(tmp_path, "items.xlsx", "x")
    assert_clean_failure(cli, engine, ["load", "--items", odd], "items.xlsx", "unknown extension")


def test_database_down(cli, engine, good_files, monkeypatch):
    items, purchases = good_files
    before = table_counts(engine)
    monkeypatch.setenv("RECSYS_DATABASE_URL", "postgresql+psycopg2://shop:pw@127.0.0.1:1/shop")
    code, out = cli("load", "--items", items, "--purchases", purchases)
    assert code == 2 and "Traceback" not in out and "cannot be reached" in out
    assert table_counts(engine) == before


def rejects_of(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT kind, row_number, field, reason, detail, raw FROM load_rejects "
                                    "ORDER BY kind, row_number")).fetchall()


@pytest.mark.parametrize("bad_row, field, reason", [
    ("u9,a,yesterday-ish,o9,1,", "purchased_at", "invalid_timestamp"),
    ("u9,a,2024-02-05,o9,0,", "quantity", "non_positive_quantity"),
    ("u9,a,2024-02-05,o9,1,-3", "unit_price", "negative_price"),
    ("u9,a,2024-02-05,o9,1,NaN", "unit_price", "nan_price"),
    (",a,2024-02-05,o9,1,", "user_id", "missing_user_id"),
    ("u9,zz,2024-02-05,o9,1,", "item_id", "unknown_item"),
])
def test_bad_purchase_rows_are_rejected_with_reason(cli, engine, tmp_path, good_files, bad_row, field, reason):
    purchases = write(tmp_path, "purchases.csv", PURCHASES + bad_row + "\n")
    code, out = cli("load", "--items", good_files[0], "--purchases", purchases)
    assert code == 0, out
    assert "rejected:  1 rows" in out and reason in out and "row 6" in out
    assert "accounted: 10 of 10 input rows" in out
    (kind, row_number, rejected_field, rejected_reason, detail, raw), = rejects_of(engine)
    assert (kind, row_number, rejected_field, rejected_reason) == ("purchase", 6, field, reason)
    assert raw["user_id"] in ("u9", "")
    assert table_counts(engine)["purchases"] == 5
    # the same load again records nothing twice
    cli("load", "--items", good_files[0], "--purchases", purchases)
    assert len(rejects_of(engine)) == 1


@pytest.mark.parametrize("bad_row, field, reason", [
    ("e,shoes,acme,-1,Bad,true,,red,", "price", "negative_price"),
    ("e,shoes,acme,NaN,Bad,true,,red,", "price", "nan_price"),
    ("e,shoes,acme,cheap,Bad,true,,red,", "price", "invalid_price"),
    ("e,,acme,3,Bad,true,,red,", "category", "missing_category"),
    ("e,shoes,acme,3,Bad,maybe,,red,", "in_stock", "invalid_in_stock"),
    ("e,shoes,acme,3,Bad,true,31/31/2024,red,", "created_at", "invalid_timestamp"),
])
def test_bad_item_rows_are_rejected_with_reason(cli, engine, tmp_path, good_files, bad_row, field, reason):
    items = write(tmp_path, "items.csv", ITEMS + bad_row + "\n")
    code, out = cli("load", "--items", items, "--purchases", good_files[1])
    assert code == 0, out
    (kind, row_number, rejected_field, rejected_reason, _, raw), = rejects_of(engine)
    assert (kind, row_number, rejected_field, rejected_reason) == ("item", 5, field, reason)
    assert raw["item_id"] == "e"
    assert table_counts(engine)["items"] == 4


def test_purchases_of_a_rejected_item_say_so(cli, engine, tmp_path):
    items = write(tmp_path, "items.csv", ITEMS + "e,shoes,acme,-1,Bad,true,,red,\n")
    purchases = write(tmp_path, "purchases.csv", PURCHASES + "u9,e,2024-02-05,o9,1,\n")
    code, out = cli("load", "--items", items, "--purchases", purchases)
    assert code == 0
    reasons = {r.reason for r in rejects_of(engine)}
    assert reasons == {"negative_price", "item_rejected"}


def test_duplicate_rows_are_rejected_pointing_at_the_first(cli, engine, tmp_path, good_files):
    first_line = PURCHASES.splitlines()[1]
    purchases = write(tmp_path, "purchases.csv", PURCHASES + first_line + "\n")
    code, out = cli("load", "--items", good_files[0], "--purchases", purchases)
    assert code == 0
    (_, row_number, _, reason, detail, _), = rejects_of(engine)
    assert (row_number, reason) == (6, "duplicate_row") and "row 1" in detail
    items = write(tmp_path, "items2.csv", ITEMS + "a,shoes,acme,99,Other,true,,red,\n")
    code, out = cli("load", "--items", items)
    assert "duplicate_item_id" in out


def test_create_missing_items(cli, engine, tmp_path, good_files):
    purchases = write(tmp_path, "purchases.csv", PURCHASES + "u9,zz,2024-02-05,o9,1,\n")
    code, out = cli("load", "--items", good_files[0], "--purchases", purchases, "--create-missing-items")
    assert code == 0 and "rejected:  0 rows" in out
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT category FROM items WHERE item_id = 'zz'")).scalar() == "unknown"


def test_strict_load_changes_nothing_when_a_row_is_bad(cli, engine, tmp_path, good_files):
    purchases = write(tmp_path, "purchases.csv", PURCHASES + "u9,a,not-a-date,o9,1,\n")
    out = assert_clean_failure(cli, engine, ["load", "--items", good_files[0], "--purchases", purchases, "--strict"],
                               "--strict", "purchases.csv, row 6, field 'purchased_at'", "database is unchanged")
    assert table_counts(engine)["items"] == 0


def test_parquet_input(engine, tmp_path):
    items = pd.read_csv(pd.io.common.StringIO(ITEMS))
    purchases = pd.read_csv(pd.io.common.StringIO(PURCHASES))
    purchases["purchased_at"] = pd.to_datetime(purchases["purchased_at"], utc=True, format="mixed")
    items.to_parquet(tmp_path / "items.parquet")
    purchases.to_parquet(tmp_path / "purchases.parquet")
    report = load_frames(engine, read_frames(tmp_path / "items.parquet", tmp_path / "purchases.parquet"))
    assert (report.items_inserted, report.purchases_inserted, report.rejected_rows) == (4, 5, 0)


def test_rejects_command_lists_rows(cli, engine, tmp_path, good_files):
    purchases = write(tmp_path, "purchases.csv", PURCHASES + "u9,zz,2024-02-05,o9,1,\n")
    cli("load", "--items", good_files[0], "--purchases", purchases)
    code, out = cli("rejects")
    assert code == 0 and "unknown_item 1" in out and "row 6, field 'item_id'" in out
