"""Extraction from Postgres into columnar arrays matches the frames that were loaded."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recsys.ingest.extract import extract_dataset
from recsys.ingest.load import load_frames
from recsys.ingest.loaders.generic import read_frames
from recsys.data.synthetic import ShopConfig, generate_shop


@pytest.fixture()
def loaded_shop(engine, tmp_path):
    shop = generate_shop(ShopConfig(seed=3, n_items=400, n_users=300, n_baskets=1500))
    items_path, purchases_path = shop.write_csv(tmp_path)
    report = load_frames(engine, read_frames(items_path, purchases_path, side_features=shop.extra_side_features))
    assert report.rejected_rows == 0
    return shop


def test_extraction_equals_the_in_memory_dataset(engine, loaded_shop):
    expected = loaded_shop.to_dataset()
    got = extract_dataset(engine, chunk_size=97)  # chunking must not matter
    order = np.argsort(expected.item_ids.astype(str))  # extraction orders items by id
    assert got.item_ids.tolist() == expected.item_ids[order].tolist()
    for name in ("category", "brand"):
        e, g = getattr(expected, name), getattr(got, name)
        assert [g.values[c] for c in g.codes] == [e.values[c] for c in e.codes[order]]
    (color,) = got.extra_features
    assert color.name == "color"
    np.testing.assert_allclose(got.price, expected.price[order], rtol=1e-6)
    np.testing.assert_array_equal(got.in_stock, expected.in_stock[order])
    np.testing.assert_array_equal(got.item_created_at, expected.item_created_at[order])

    def lines(ds):
        return sorted(zip(ds.user_ids[ds.purchase_user].tolist(), ds.item_ids[ds.purchase_item].tolist(),
                          ds.purchase_time.tolist(), (ds.purchase_order >= 0).tolist(),
                          ds.purchase_quantity.tolist()))

    assert lines(got) == lines(expected)
    # purchases come sorted by (user, time); dense ids are contiguous
    key = got.purchase_user.astype(np.int64) * 10**10 + got.purchase_time
    assert np.all(np.diff(key) >= 0)
    assert got.purchase_user.max() + 1 == got.n_users
    orders = np.unique(got.purchase_order[got.purchase_order >= 0])
    np.testing.assert_array_equal(orders, np.arange(len(orders)))
    assert got.watermark.max_purchased_at == int(expected.purchase_time.max())
    assert got.watermark.n_purchases == expected.n_purchases


def test_time_window(engine, loaded_shop):
    full = extract_dataset(engine)
    cut = int(np.median(full.purchase_time))
    until = dt.datetime.fromtimestamp(cut, dt.timezone.utc)
    early = extract_dataset(engine, until=until)
    late = extract_dataset(engine, since=until)
    assert early.n_purchases + late.n_purchases == full.n_purchases
    assert early.purchase_time.max() < cut <= late.purchase_time.min()
    assert early.n_items == late.n_items == full.n_items  # the catalogue is never windowed


def test_a_view_with_other_names_can_be_used(engine, loaded_shop):
    """Users point the extraction at views over their own tables."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA IF NOT EXISTS shop"))
        conn.execute(sa.text("CREATE TABLE shop.products AS SELECT item_id AS sku, category AS cat, brand, price, "
                             "in_stock, created_at, updated_at, attributes FROM items"))
        conn.execute(sa.text("CREATE VIEW shop.items_v AS SELECT sku AS item_id, cat AS category, brand, price, "
                             "in_stock, created_at, updated_at, attributes FROM shop.products"))
        conn.execute(sa.text("CREATE VIEW shop.purchases_v AS SELECT * FROM purchases"))
    via_view = extract_dataset(engine, items_relation="shop.items_v", purchases_relation="shop.purchases_v")
    direct = extract_dataset(engine)
    assert via_view.item_ids.tolist() == direct.item_ids.tolist()
    np.testing.assert_array_equal(via_view.purchase_item, direct.purchase_item)
