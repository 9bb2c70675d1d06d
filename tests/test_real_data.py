"""Integration on the real data sets in ../shared/data: every row accounted for, reloads add nothing."""
from __future__ import annotations

import pytest

from conftest import ONLINE_RETAIL, TAFENG, table_counts
from recsys.ingest.extract import extract_dataset
from recsys.ingest.load import load_frames

pytestmark = pytest.mark.skipif(not TAFENG.exists(), reason="../shared/data is not next to the repo")


def test_tafeng_full_load_accounts_for_every_row(engine):
    from recsys.ingest.loaders.tafeng import read_frames

    frames = read_frames(TAFENG)
    assert frames.input_rows == 817_741
    first = load_frames(engine, frames)
    assert first.accounted_rows == 817_741
    assert first.purchases_inserted + first.rejected_rows == 817_741
    assert first.items_inserted == 23_812
    counts = table_counts(engine)
    second = load_frames(engine, frames)
    assert second.purchases_inserted == 0 and second.items_inserted == 0 and second.items_updated == 0
    assert second.accounted_rows == 817_741
    assert table_counts(engine) == counts
    ds = extract_dataset(engine)
    assert (ds.n_items, ds.n_users, ds.n_purchases) == (23_812, 32_266, first.purchases_inserted)
    assert [f.name for f in ds.extra_features] == ["product_class"]
    # one sub-class per product (its most frequent): a few rare sub-classes of the 2,012 vanish
    assert 2_000 <= ds.category.cardinality - 1 <= 2_012


@pytest.mark.skipif(not ONLINE_RETAIL.exists(), reason="no Online Retail file")
def test_online_retail_full_load_accounts_for_every_row(engine):
    from recsys.ingest.loaders.online_retail import read_frames

    frames = read_frames(ONLINE_RETAIL)
    assert frames.input_rows == 541_909
    first = load_frames(engine, frames)
    assert first.accounted_rows == 541_909
    for reason in ("cancellation", "missing_customer", "non_positive_price", "duplicate_row", "not_a_product"):
        assert first.rejected.get(reason, 0) > 0, reason
    counts = table_counts(engine)
    second = load_frames(engine, frames)
    assert second.purchases_inserted == 0 and second.items_updated == 0
    assert second.accounted_rows == 541_909
    assert table_counts(engine) == counts
