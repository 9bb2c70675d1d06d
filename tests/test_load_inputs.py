"""`recsys load` with the files shops really export (issue 11): nothing is stored wrong.

Each case ends in one of three places for every input row: loaded as written, rejected
with a reason (file, row, field), or a file-level error with the database unchanged.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import table_counts
from recsys.ingest.load import load_frames
from recsys.ingest.loaders.files import parse_key_text, parse_number, parse_timestamp, read_table
from recsys.ingest.loaders.generic import read_frames

ITEMS = "item_id,category,brand,price\nA,shoes,acme,10\nB,shoes,acme,12.98\nC,hats,zeta,5\n"
PURCHASES_HEADER = "user_id,item_id,purchased_at,order_id,quantity,unit_price\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def rejects_of(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT kind, row_number, field, reason, detail, raw FROM load_rejects "
                                    "ORDER BY kind, row_number")).fetchall()


def items_in(engine):
    with engine.connect() as conn:
        return {r.item_id: r for r in conn.execute(sa.text("SELECT * FROM items"))}


# --- 1. ragged rows -------------------------------------------------------------------------------

def test_a_first_row_with_surplus_fields_is_rejected_not_shifted(cli, engine, tmp_path):
    path = write(tmp_path, "r1.csv", "item_id,category\nRAG-1,shoes,extra,fields\nRAG-2,shoes\n")
    code, out = cli("load", "--items", path)
    assert code == 0, out
    assert set(items_in(engine)) == {"RAG-2"}
    (kind, row, field, reason, detail, raw), = rejects_of(engine)
    assert (kind, row, reason) == ("item", 1, "wrong_field_count")
    assert "4 fields" in detail and "header has 2" in detail
    assert raw == {"fields": ["RAG-1", "shoes", "extra", "fields"]}
    assert "accounted: 2 of 2 input rows" in out


def test_an_unquoted_comma_in_the_first_title_rejects_only_that_row(engine, tmp_path):
    text = ("item_id,category,title,price\n"
            "A,shoes,Runner, fine,10\n"
            "B,shoes,Trail,12\n"
            "C,hats,Cap,5\n"
            "D,hats,Too,few\n".replace("D,hats,Too,few", "D,hats"))
    report = load_frames(engine, read_frames(write(tmp_path, "i.csv", text), None))
    assert (report.items_inserted, report.rejected) == (2, {"wrong_field_count": 2})
    rows = {r.row_number: r.detail for r in rejects_of(engine)}
    assert set(rows) == {1, 4} and "5 fields" in rows[1] and "2 fields" in rows[4]
    assert {k: float(v.price) for k, v in items_in(engine).items()} == {"B": 12.0, "C": 5.0}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.text(alphabet="ab,\"\n x", max_size=5), min_size=1, max_size=4), min_size=1, max_size=6))
def test_any_csv_accounts_for_every_record(tmp_path, records):
    """Every CSV record is a row of the frame, in order, with its fields when the count is right."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["c1", "c2", "c3"])
    records = [r for r in records if r != [""]]  # a lone empty field is written as a blank line
    writer.writerows(records)
    if not records:
        return
    path = tmp_path / "h.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    source = read_table(path)
    assert source.rows == len(records)
    for k, record in enumerate(records):
        if len(record) == 3:
            assert list(source.frame.iloc[k]) == record and k not in source.ragged
        else:
            assert source.ragged[k] == record


# --- 2. dates -----------------------------------------------------------------------------------

def test_ambiguous_dates_are_rejected_unless_the_format_is_named(cli, engine, tmp_path):
    items = write(tmp_path, "items.csv", ITEMS)
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + "u1,A,12/01/2026 10:00,o1,1,\n"
                      "u1,B,13/01/2026 10:00,o1,1,\nu2,C,01/12/2026 10:00,o2,1,\n")
    code, out = cli("load", "--items", items, "--purchases", purchases)
    assert code == 0 and "invalid_timestamp        3" in out and "--dayfirst" in out
    assert table_counts(engine)["purchases"] == 0
    code, out = cli("load", "--items", items, "--purchases", purchases, "--dayfirst")
    assert code == 0, out
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT item_id, purchased_at::date::text FROM purchases")).fetchall())
    assert got == {"A": "2026-01-12", "B": "2026-01-13", "C": "2026-12-01"}


def test_a_named_date_format(engine, tmp_path):
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + "u1,A,01/12/2025 10:00,o1,1,\nu1,B,13/01/2025 10:00,o1,1,\n")
    frames = read_frames(write(tmp_path, "items.csv", ITEMS), purchases, date_format="%m/%d/%Y %H:%M")
    assert frames.purchases["purchased_at"].dt.strftime("%Y-%m-%d").tolist() == ["2025-01-12"]
    assert frames.rejects["reason"].tolist() == ["invalid_timestamp"]


@given(st.datetimes(min_value=pd.Timestamp("1970-01-02").to_pydatetime(),
                    max_value=pd.Timestamp("2026-01-01").to_pydatetime()))
@settings(max_examples=50, deadline=None)
def test_iso_8601_round_trips(moment):
    values = pd.Series([moment.isoformat(), moment.strftime("%Y-%m-%d %H:%M:%S.%f"), moment.isoformat() + "Z"])
    ts, bad = parse_timestamp(values)
    assert not bad.any()
    assert all(t.tz_convert(None) == pd.Timestamp(moment) for t in ts)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(1971, 2025))
@settings(max_examples=50, deadline=None)
def test_slash_dates_are_never_guessed(day, month, year):
    _, bad = parse_timestamp(pd.Series([f"{day:02d}/{month:02d}/{year} 10:00"]))
    assert bad.all()
    ts, bad = parse_timestamp(pd.Series([f"{day:02d}/{month:02d}/{year} 10:00"]), dayfirst=True)
    assert not bad.any() and (ts[0].day, ts[0].month) == (day, month)


def test_implausible_timestamps_are_rejected_with_counts(cli, engine, tmp_path):
    far = (pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + "u1,A,0001-01-01T00:00:00Z,,1,\n"
                      "u1,B,2999-06-01,,1,\n" f"u2,C,{far},,1,\n" "u2,A,2024-05-01,,1,\n")
    items = write(tmp_path, "items.csv", "item_id,category,created_at\nA,shoes,\nB,shoes,1900-01-01\nC,hats,2024-01-01\n")
    code, out = cli("load", "--items", items, "--purchases", purchases)
    assert code == 0, out
    assert "implausible_timestamp    4" in out, out
    reasons = {(r.kind, r.row_number): r.detail for r in rejects_of(engine) if r.reason == "implausible_timestamp"}
    assert set(reasons) == {("item", 2), ("purchase", 1), ("purchase", 2), ("purchase", 3)}
    assert "before 1970" in reasons[("purchase", 1)] and "after this load" in reasons[("purchase", 3)]
    assert table_counts(engine)["purchases"] == 1  # only the 2024 line
    assert "accounted: 7 of 7 input rows" in out


# --- 3. the COPY null marker -------------------------------------------------------------------

def test_a_literal_backslash_n_is_stored_as_written(cli, engine, tmp_path):
    items = write(tmp_path, "items.csv", "item_id,category,brand,title\n\\N,\\N,\\N,\\N\nB,shoes,,\n")
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + "\\N,\\N,2024-05-01,\\N,1,\n")
    code, out = cli("load", "--items", items, "--purchases", purchases)
    assert code == 0 and "Traceback" not in out, out
    got = items_in(engine)
    assert (got["\\N"].category, got["\\N"].brand, got["\\N"].title) == ("\\N", "\\N", "\\N")
    assert got["B"].brand is None and got["B"].title is None  # blank is still missing
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT user_id, item_id, order_id FROM purchases")).one()
    assert tuple(row) == ("\\N", "\\N", "\\N")


def test_a_nul_character_is_a_rejected_row(engine, tmp_path):
    items = write(tmp_path, "items.csv", b"item_id,category,title\nA,shoes,bad\x00title\nB,shoes,ok\n")
    report = load_frames(engine, read_frames(items, None))
    assert (report.items_inserted, report.rejected) == (1, {"nul_character": 1})


# --- 4. non-finite numbers --------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1e400", "-1e400", "inf", "Infinity", "NaN"])
def test_non_finite_prices_are_rejected(engine, tmp_path, value):
    items = write(tmp_path, "items.csv", f"item_id,category,price\nA,shoes,{value}\nB,shoes,1e300\n")
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + f"u1,B,2024-05-01,,1,{value}\n")
    report = load_frames(engine, read_frames(items, purchases))
    assert report.rejected == {"nan_price": 2}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM items WHERE price = 'Infinity' OR price = '-Infinity' "
                                    "OR price = 'NaN'")).scalar() == 0


@given(st.floats(allow_nan=True, allow_infinity=True))
@settings(max_examples=100, deadline=None)
def test_parse_number_is_finite_or_flagged(x):
    values, not_number, non_finite = parse_number(pd.Series([repr(x), str(x)], dtype=object))
    assert not not_number.any()
    assert np.isfinite(values).all() or non_finite.all()
    if np.isfinite(x):
        assert (values == x).all()


# --- 5. Parquet types ---------------------------------------------------------------------------

def test_parquet_float_ids_and_json_attributes(engine, tmp_path):
    items = pd.DataFrame({
        "item_id": [9101.0, 9105.5, np.nan],
        "category": ["a", "b", "c"],
        "specs": [{"size": 42, "tags": ["run"]}, None, None],
        "score": [1.5, 2.0, np.nan],
    })
    items.to_parquet(tmp_path / "items.parquet")
    purchases = pd.DataFrame({"user_id": [1.0, 2.0], "item_id": [9101.0, 9101.0],
                              "purchased_at": pd.to_datetime(["2024-05-01", "2024-05-02"]),
                              "order_id": [np.nan, 7.0]})
    purchases.to_parquet(tmp_path / "purchases.parquet")
    report = load_frames(engine, read_frames(tmp_path / "items.parquet", tmp_path / "purchases.parquet"))
    assert (report.items_inserted, report.purchases_inserted) == (1, 2)
    got = items_in(engine)
    assert set(got) == {"9101"}
    assert got["9101"].attributes == {"specs": {"size": 42, "tags": ["run"]}, "score": 1.5}
    details = {r.row_number: (r.field, r.reason, r.detail) for r in rejects_of(engine)}
    assert details[2][:2] == ("item_id", "invalid_type") and "float64" in details[2][2]
    assert details[3][1] == "missing_item_id"
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT user_id, coalesce(order_id, '-') FROM purchases")).fetchall()) == [
            ("1", "-"), ("2", "7")]


@pytest.mark.parametrize("column, values, kind", [
    ("category", [["a", "b"], ["c"]], "list"),
    ("category", [True, False], "boolean"),
    ("brand", [{"k": 1}, {"k": 2}], "struct"),
])
def test_parquet_lists_structs_and_booleans_are_rejected_naming_the_type(engine, tmp_path, column, values, kind):
    frame = pd.DataFrame({"item_id": ["A", "B"], "category": ["x", "y"], "brand": ["m", "n"]})
    frame[column] = values
    frame.to_parquet(tmp_path / "items.parquet")
    report = load_frames(engine, read_frames(tmp_path / "items.parquet", None))
    assert (report.items_inserted, report.rejected) == (0, {"invalid_type": 2})
    for row in rejects_of(engine):
        assert row.field == column and kind in row.detail and "the column's type is" in row.detail


@given(st.one_of(st.integers(-2**53, 2**53), st.floats(allow_nan=False, allow_infinity=False, width=64)))
@settings(max_examples=100, deadline=None)
def test_key_text_of_numbers(x):
    text, bad, _ = parse_key_text(pd.Series([x], dtype=np.float64 if isinstance(x, float) else np.int64), "item_id")
    if isinstance(x, int) or (x.is_integer() and abs(x) < 2 ** 53):
        assert not bad[0] and text[0] == str(int(x))
    else:
        assert bad[0]


# --- 6. identical purchase lines ---------------------------------------------------------------

LINES = PURCHASES_HEADER + "u1,A,2024-05-01T10:00:00Z,o1,1,10\n" * 3 + "u1,B,2024-05-01T10:00:00Z,o1,1,\n"


@pytest.mark.parametrize("mode, stored, summary", [
    (None, [("A", 1), ("B", 1)], "2 purchase lines repeat an earlier line exactly and were rejected"),
    ("keep", [("A", 1), ("A", 1), ("A", 1), ("B", 1)], "were kept as separate lines"),
    ("sum", [("A", 3), ("B", 1)], "were added to its quantity"),
])
def test_duplicate_lines_choice(cli, engine, tmp_path, mode, stored, summary):
    items, purchases = write(tmp_path, "items.csv", ITEMS), write(tmp_path, "p.csv", LINES)
    args = ["load", "--items", items, "--purchases", purchases] + (["--duplicate-lines", mode] if mode else [])
    code, out = cli(*args)
    assert code == 0, out
    assert summary in out and "accounted: 7 of 7 input rows" in out
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT item_id, quantity FROM purchases")).fetchall()) == stored
    before = table_counts(engine)
    code, out = cli(*args)  # reloading changes nothing
    assert code == 0 and table_counts(engine)["purchases"] == before["purchases"]


# --- 7. out-of-range quantity ---------------------------------------------------------------

def test_an_out_of_range_quantity_is_a_rejected_row(cli, engine, tmp_path):
    purchases = write(tmp_path, "p.csv", PURCHASES_HEADER + "u1,A,2024-05-01,,99999999999,\nu1,B,2024-05-01,,2,\n")
    code, out = cli("load", "--items", write(tmp_path, "items.csv", ITEMS), "--purchases", purchases)
    assert code == 0 and "Traceback" not in out, out
    assert "quantity_out_of_range    1" in out and "row 1, field 'quantity'" in out
    assert table_counts(engine)["purchases"] == 1


# --- Also: European exports --------------------------------------------------------------------

EURO_ITEMS = "\ufeffitem_id;category;price\nA;shoes;1,99\nB;hats;12\n"


def test_a_semicolon_export_is_detected_and_decimal_commas_read(cli, engine, tmp_path):
    items = write(tmp_path, "items.csv", EURO_ITEMS)
    code, out = cli("load", "--items", items, "--decimal", ",")
    assert code == 0, out
    assert "semicolon-separated" in out and "--delimiter" in out
    assert {k: float(v.price) for k, v in items_in(engine).items()} == {"A": 1.99, "B": 12.0}


def test_a_decimal_comma_without_the_option_is_rejected_with_a_hint(engine, tmp_path):
    frames = read_frames(write(tmp_path, "items.csv", EURO_ITEMS), None)
    (detail,) = frames.rejects["detail"]
    assert "'1,99' is not a number" in detail and "--decimal ," in detail


def test_the_missing_column_error_hints_at_the_delimiter(cli, engine, tmp_path):
    items = write(tmp_path, "items.csv", EURO_ITEMS)
    before = table_counts(engine)
    code, out = cli("load", "--items", items, "--delimiter", ",")
    assert code == 2 and "Traceback" not in out
    assert "missing the required column" in out and "--delimiter ';'" in out and "--decimal ," in out
    assert table_counts(engine) == before


def test_load_report_json_counts_identical_lines(cli, engine, tmp_path):
    out_json = tmp_path / "report.json"
    cli("load", "--items", write(tmp_path, "items.csv", ITEMS), "--purchases", write(tmp_path, "p.csv", LINES),
        "--duplicate-lines", "sum", "--json", out_json)
    report = json.loads(out_json.read_text())
    assert (report["identical_lines"], report["purchases_merged"], report["duplicate_lines"]) == (2, 2, "sum")
    assert report["accounted_rows"] == report["input_rows"] == 7


# --- other exports a shop may send ---------------------------------------------------------------

def test_crlf_quoted_newlines_and_a_tab_delimiter(engine, tmp_path):
    crlf = write(tmp_path, "i.csv", 'item_id,category,title\r\nA,shoes,"two\r\nlines"\r\nB,hats,Cap\r\n')
    report = load_frames(engine, read_frames(crlf, None))
    assert (report.items_inserted, report.rejected_rows) == (2, 0)
    assert items_in(engine)["A"].title == "two\r\nlines"
    tabbed = write(tmp_path, "t.csv", "item_id\tcategory\tprice\nC\tshoes\t1.5\n")
    for delimiter in (None, "tab", "\t"):
        frames = read_frames(tabbed, None, delimiter=delimiter)
        assert frames.items["item_id"].tolist() == ["C"] and frames.items["price"].tolist() == [1.5]


def test_a_column_named_twice_and_an_unknown_encoding_are_file_errors(cli, engine, tmp_path):
    before = table_counts(engine)
    code, out = cli("load", "--items", write(tmp_path, "i.csv", "item_id,category,category\nA,x,y\n"))
    assert code == 2 and "'category' twice" in out and "Traceback" not in out
    code, out = cli("load", "--items", write(tmp_path, "j.csv", ITEMS), "--encoding", "klingon")
    assert code == 2 and "not a known text encoding" in out
    assert table_counts(engine) == before


def test_parquet_string_dtype_columns(engine, tmp_path):
    frame = pd.DataFrame({"item_id": pd.array(["A", " B ", None], dtype="string"),
                          "category": pd.array(["x", "y", "z"], dtype="string"),
                          "color": pd.array(["red", None, "blue"], dtype="string")})
    frame.to_parquet(tmp_path / "items.parquet")
    report = load_frames(engine, read_frames(tmp_path / "items.parquet", None, side_features=["color"]))
    assert (report.items_inserted, report.rejected) == (2, {"missing_item_id": 1})
    got = items_in(engine)
    assert set(got) == {"A", "B"} and got["A"].attributes == {"color": "red"} and got["B"].attributes == {}
