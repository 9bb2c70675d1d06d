"""`recsys generate OUT_DIR --items N`: a synthetic shop that `recsys load` reads with no rejects."""
from __future__ import annotations

import re
import shlex

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import table_counts
from recsys.app.cli import main
from recsys.app.cli_data import default_lines, shop_shape
from recsys.data.synthetic import ShopConfig


def generate(*args):
    result = CliRunner().invoke(main, ["generate", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


def printed_rows(out: str) -> dict[str, int]:
    """{file name: rows} from the lines `  PATH   1,234 rows  (...)`."""
    return {m.group(1).rsplit("/", 1)[-1]: int(m.group(2).replace(",", ""))
            for m in re.finditer(r"^  (\S+)\s+([\d,]+) rows", out, re.M)}


def load_command(out: str) -> list[str]:
    line = out.strip().splitlines()[-1].strip()
    assert line.startswith("recsys load "), out
    return shlex.split(line)[1:]


def data_rows(path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1  # no value in the shop holds a newline


def test_writes_both_files_and_prints_their_rows_and_the_load_command(tmp_path):
    out_dir = tmp_path / "shop"
    code, out = generate(out_dir, "--items", 300, "--seed", 1)
    assert code == 0, out
    rows = printed_rows(out)
    assert rows["items.csv"] == data_rows(out_dir / "items.csv") == 300
    assert rows["purchases.csv"] == data_rows(out_dir / "purchases.csv")
    assert rows["purchases.csv"] == pytest.approx(default_lines(300), rel=0.1)  # 10 lines per item
    purchases = pd.read_csv(out_dir / "purchases.csv")
    assert list(purchases.columns) == ["user_id", "item_id", "purchased_at", "order_id", "quantity", "unit_price"]
    assert purchases["user_id"].nunique() == 150  # N/2
    assert list(pd.read_csv(out_dir / "items.csv").columns) == [
        "item_id", "category", "brand", "price", "title", "in_stock", "created_at", "color"]
    assert re.search(r"in \d+\.\d s, wrote it in \d+\.\d s", out)
    assert load_command(out) == ["load", "--items", str(out_dir / "items.csv"),
                                 "--purchases", str(out_dir / "purchases.csv"), "--side-feature", "color"]


def test_users_and_lines_are_what_was_asked(tmp_path):
    code, out = generate(tmp_path, "--items", 400, "--users", 60, "--lines", 2500)
    assert code == 0, out
    purchases = pd.read_csv(tmp_path / "purchases.csv")
    assert purchases["user_id"].nunique() == 60
    assert len(purchases) == printed_rows(out)["purchases.csv"] == pytest.approx(2500, rel=0.05)


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_same_seed_same_bytes_other_seed_other_shop(tmp_path, file_format):
    names = [f"items.{file_format}", f"purchases.{file_format}"]
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        code, out = generate(tmp_path / folder, "--items", 300, "--seed", seed, "--format", file_format)
        assert code == 0, out
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_the_shape_follows_the_item_count_through_the_demo_and_benchmark_shops():
    demo = ShopConfig()  # the 3,000-item demo shop
    assert shop_shape(3000) == {"n_categories": demo.n_categories, "brands_per_category": demo.brands_per_category,
                                "n_communities": demo.n_communities}
    # bench/bench_end_to_end.py SHOP_1M
    assert shop_shape(1_000_000) == {"n_categories": 300, "brands_per_category": 20, "n_communities": 2000}
    assert default_lines(1_000_000) == 10_000_000 and default_lines(5_000_000) == 10_000_000


def test_help_states_the_defaults():
    code, out = generate("--help")
    assert code == 0
    for text in ("OUT_DIR", "N/2", "10 per item, at most 10,000,000", "N/500", "--format"):
        assert text in out, out


@pytest.mark.parametrize("args, expected", [
    (["--items", 50], "'--items': 50 is not in the range x>=100"),
    ([], "Missing option '--items'"),
    (["--items", 300, "--lines", 5], "'--lines': 5 is not in the range x>=10"),
    (["--items", 300, "--users", 0], "'--users': 0 is not in the range x>=1"),
    (["--items", 300, "--lines", 1000, "--users", 5000], "5,000 users need at least 16,000 purchase lines"),
    (["--items", 300, "--format", "xlsx"], "'xlsx' is not one of 'csv', 'parquet'"),
])
def test_bad_arguments_are_one_clear_error_and_write_nothing(tmp_path, args, expected):
    out_dir = tmp_path / "shop"
    code, out = generate(out_dir, *args)
    assert code == 2, out
    assert "Traceback" not in out and out.count("Error: ") == 1
    assert expected in out, out
    assert not out_dir.exists()


def test_out_dir_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    code, out = generate(tmp_path / "taken", "--items", 300)
    assert code == 2 and "is a file" in out, out


@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_the_printed_load_command_loads_every_row(cli, engine, tmp_path, file_format):
    code, out = generate(tmp_path / "shop", "--items", 300, "--format", file_format, "--seed", 2)
    assert code == 0, out
    rows = printed_rows(out)
    code, loaded = cli(*load_command(out))
    assert code == 0, loaded
    assert "rejected:  0 rows" in loaded, loaded
    total = rows[f"items.{file_format}"] + rows[f"purchases.{file_format}"]
    assert f"accounted: {total:,} of {total:,} input rows" in loaded, loaded
    counts = table_counts(engine)
    assert counts["items"] == rows[f"items.{file_format}"] == 300
    assert counts["purchases"] == rows[f"purchases.{file_format}"]
    assert counts["load_rejects"] == 0


def test_chunked_csv_writer_writes_what_pandas_writes(tmp_path):
    from recsys.data.synthetic import _write_csv_chunked, generate_shop

    shop = generate_shop(ShopConfig(seed=4, n_items=300, n_users=100, n_baskets=600))
    for frame in (shop.items, shop.purchases):
        frame = frame.copy()
        stamp = frame.select_dtypes("datetimetz").columns[0]
        frame.loc[frame.index[3], stamp] = pd.NaT
        frame["naive"] = frame[stamp].dt.tz_localize(None)
        frame.to_csv(tmp_path / "pandas.csv", index=False, date_format="%Y-%m-%dT%H:%M:%S%z")
        _write_csv_chunked(frame, tmp_path / "chunked.csv", chunk_rows=97)
        assert (tmp_path / "chunked.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
