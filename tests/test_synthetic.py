"""The synthetic shop: deterministic, consistent, and shaped like a real shop."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data.dataset import from_frames
from recsys.data.synthetic import ShopConfig, SyntheticShop, generate_shop

SMALL = ShopConfig(seed=3, n_items=600, n_users=300, n_categories=12, n_communities=8,
                   n_baskets=3000)


@pytest.fixture(scope="module")
def shop() -> SyntheticShop:
    return generate_shop(SMALL)


def _basket_keys(purchases: pd.DataFrame) -> np.ndarray:
    """Order id where present, else (user, timestamp): the basket a line belongs to."""
    fallback = purchases["user_id"] + "@" + purchases["purchased_at"].astype(str)
    return purchases["order_id"].fillna(fallback).to_numpy(dtype=object)


def test_same_seed_same_shop_and_different_seed_differs(shop):
    again = generate_shop(SMALL)
    pd.testing.assert_frame_equal(shop.items, again.items)
    pd.testing.assert_frame_equal(shop.purchases, again.purchases)
    np.testing.assert_array_equal(shop.item_community, again.item_community)
    assert shop.new_item_ids == again.new_item_ids

    other = generate_shop(ShopConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not shop.purchases.equals(other.purchases)
    assert not np.array_equal(shop.item_community, other.item_community)


def test_schema_and_dtypes(shop):
    items, purchases = shop.items, shop.purchases
    assert list(items.columns) == ["item_id", "category", "brand", "price", "title", "in_stock",
                                   "created_at", "color"]
    assert list(purchases.columns) == ["user_id", "item_id", "purchased_at", "order_id",
                                       "quantity", "unit_price"]
    assert shop.extra_side_features == ["color"]
    assert len(items) == SMALL.n_items and items["item_id"].is_unique
    assert items["item_id"].str.fullmatch(r"I\d{6}").all()
    assert purchases["user_id"].str.fullmatch(r"U\d{5}").all()
    assert purchases["order_id"].dropna().str.fullmatch(r"O\d{7}").all()
    assert str(items["created_at"].dt.tz) == "UTC" and str(purchases["purchased_at"].dt.tz) == "UTC"
    assert items["in_stock"].dtype == bool and items["in_stock"].mean() > 0.8
    assert (items["price"] > 0).all() and pd.api.types.is_float_dtype(items["price"])
    assert (purchases["quantity"] >= 1).all() and pd.api.types.is_integer_dtype(purchases["quantity"])
    assert (purchases["unit_price"] > 0).all()
    assert shop.item_community.dtype == np.int32 and len(shop.item_community) == len(items)
    assert set(np.unique(shop.item_community)) == set(range(SMALL.n_communities))
    # Brands are nested in categories: a brand name belongs to exactly one category.
    assert (items.groupby("brand")["category"].nunique() == 1).all()
    # Every category is used by some community.
    assert items["category"].nunique() == SMALL.n_categories


def test_no_phantom_items_and_purchases_after_creation(shop):
    joined = shop.purchases.merge(shop.items[["item_id", "created_at"]], on="item_id",
                                  how="left", validate="many_to_one")
    assert joined["created_at"].notna().all()
    assert (joined["created_at"] <= joined["purchased_at"]).all()


def test_new_items_have_no_purchases_and_are_created_last(shop):
    new = set(shop.new_item_ids)
    assert len(new) == round(SMALL.n_items * SMALL.new_item_share)
    assert new.isdisjoint(shop.purchases["item_id"])
    is_new = shop.items["item_id"].isin(new)
    assert shop.items.loc[is_new, "created_at"].min() > shop.items.loc[~is_new, "created_at"].max()
    end = shop.purchases["purchased_at"].min().normalize() + pd.Timedelta(days=SMALL.span_days)
    assert shop.items.loc[is_new, "created_at"].min() >= end - pd.Timedelta(days=SMALL.span_days * 0.1)
    # New items still carry the side features cold start relies on.
    assert shop.items.loc[is_new, ["category", "brand", "color", "price"]].notna().all().all()


def test_some_items_are_launched_during_the_window(shop):
    start = pd.Timestamp(SMALL.start, tz="UTC")
    first_bought = shop.purchases.groupby("item_id")["purchased_at"].min()
    created = shop.items.set_index("item_id")["created_at"]
    launched_and_bought = created.loc[first_bought.index] >= start
    assert launched_and_bought.sum() > 0.5 * SMALL.n_items * SMALL.launched_share


def test_popularity_is_heavy_tailed(shop):
    counts = shop.purchases["item_id"].value_counts().reindex(shop.items["item_id"], fill_value=0)
    ranked = np.sort(counts.to_numpy())[::-1]
    top_decile_share = ranked[: len(ranked) // 10].sum() / ranked.sum()
    assert top_decile_share > 0.4


def test_user_activity_is_heavy_tailed(shop):
    per_user = shop.purchases.groupby("user_id").size().sort_values(ascending=False)
    assert per_user.iloc[0] > 10 * per_user.median()


def test_baskets_are_community_coherent(shop):
    community = pd.Series(shop.item_community, index=shop.items["item_id"])
    line_comm = community.loc[shop.purchases["item_id"]].to_numpy()
    keys = _basket_keys(shop.purchases)
    basket = pd.factorize(keys)[0]
    order = np.argsort(basket, kind="stable")
    basket, line_comm = basket[order], line_comm[order]
    same = total = 0
    for comms in np.split(line_comm, np.flatnonzero(np.diff(basket)) + 1):
        if len(comms) < 2:
            continue
        counts = np.bincount(comms)
        same += int((counts * (counts - 1)).sum() // 2)
        total += len(comms) * (len(comms) - 1) // 2
    shares = np.bincount(line_comm) / len(line_comm)
    chance = float((shares ** 2).sum())
    assert total > 0
    assert same / total > 3 * chance
    assert same / total > 0.6


def test_side_features_reveal_community_partially(shop):
    community = pd.Series(shop.item_community, index=shop.items.index)
    purity = (community.groupby(shop.items["category"]).agg(lambda c: c.value_counts(normalize=True).iloc[0]))
    # A category points at a few communities, not one and not all.
    assert 0.3 < purity.mean() < 1.0


def test_order_lines_share_time_and_user_and_till_lines_are_daily(shop):
    p = shop.purchases
    has_order = p["order_id"].notna()
    assert 0.5 < has_order.mean() < 0.9
    per_order = p[has_order].groupby("order_id").agg(times=("purchased_at", "nunique"),
                                                      users=("user_id", "nunique"))
    assert (per_order["times"] == 1).all() and (per_order["users"] == 1).all()
    till = p.loc[~has_order, "purchased_at"]
    assert (till == till.dt.normalize()).all()
    # Lines of one basket never repeat an item: repeats are folded into quantity.
    assert not pd.DataFrame({"b": _basket_keys(p), "i": p["item_id"]})[has_order].duplicated().any()


def test_to_dataset_round_trip(shop):
    ds = shop.to_dataset()
    assert ds.n_items == len(shop.items)
    assert ds.n_purchases == len(shop.purchases)
    assert ds.n_users == shop.purchases["user_id"].nunique()
    assert [sf.name for sf in ds.extra_features] == ["color"]
    assert (ds.purchase_order >= 0).sum() == shop.purchases["order_id"].notna().sum()
    assert len(np.unique(ds.purchase_order[ds.purchase_order >= 0])) == shop.purchases["order_id"].nunique()
    idx = ds.item_index()
    new_codes = [idx[i] for i in shop.new_item_ids]
    assert np.isin(new_codes, ds.purchase_item).sum() == 0


def test_write_csv_loads_back(shop, tmp_path):
    items_path, purchases_path = shop.write_csv(tmp_path / "shop")
    items = pd.read_csv(items_path)
    purchases = pd.read_csv(purchases_path)
    ds = from_frames(items, purchases, side_features=["color"])
    direct = shop.to_dataset()
    assert ds.n_items == direct.n_items and ds.n_purchases == direct.n_purchases
    np.testing.assert_array_equal(ds.purchase_time, direct.purchase_time)
    np.testing.assert_array_equal(ds.item_created_at, direct.item_created_at)
    np.testing.assert_array_equal(ds.purchase_order, direct.purchase_order)


@pytest.mark.parametrize("field, value", [
    ("n_items", 0), ("noise_share", 1.5), ("mean_basket_size", 0.5),
    ("categories_per_community", (3, 2)), ("launched_share", 0.97),
])
def test_bad_config_is_a_clear_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        generate_shop(ShopConfig(**{**SMALL.__dict__, field: value}))


def test_too_few_items_for_the_communities_is_rejected():
    with pytest.raises(ValueError, match="n_communities"):
        generate_shop(ShopConfig(n_items=10, n_communities=20))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_communities=st.integers(1, 6),
    n_categories=st.integers(1, 8),
    extra_items=st.integers(0, 60),
    n_users=st.integers(1, 40),
    n_baskets=st.integers(1, 120),
    order_share=st.floats(0, 1),
    launched_share=st.floats(0, 0.5),
    new_item_share=st.floats(0, 0.3),
)
def test_any_small_config_is_consistent(seed, n_communities, n_categories, extra_items, n_users,
                                        n_baskets, order_share, launched_share, new_item_share):
    n_items = 3 * n_communities + extra_items
    config = ShopConfig(seed=seed, n_items=n_items, n_users=n_users, n_categories=n_categories,
                        brands_per_category=2, n_communities=n_communities, n_baskets=n_baskets,
                        order_share=order_share, launched_share=launched_share,
                        new_item_share=new_item_share)
    try:
        config.validate()
    except ValueError:
        return  # too few items left on sale at the start; rejection is tested above
    shop = generate_shop(config)
    assert len(shop.items) == n_items
    assert shop.purchases["item_id"].isin(shop.items["item_id"]).all()
    assert set(shop.new_item_ids).isdisjoint(shop.purchases["item_id"])
    assert shop.purchases["user_id"].nunique() == min(n_users, n_baskets)
    created = shop.items.set_index("item_id")["created_at"].loc[shop.purchases["item_id"]]
    assert (created.to_numpy() <= shop.purchases["purchased_at"].to_numpy()).all()
    assert shop.item_community.min() >= 0 and shop.item_community.max() < n_communities
    ds = shop.to_dataset()
    assert ds.n_purchases == len(shop.purchases) and ds.n_items == n_items
