"""The query client: similar items, filters, cold start, reloading under load, CLI."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from recsys.serving import bundle as B
from recsys.serving import store as S
from recsys.serving import registry as R
from recsys.serving.client import Client, Neighbor, NoVersionError, UnknownItemError
from test_bundle import INDEX_CLASS, IndexConfig, make_parts, trained_parts

V1, V2, V3 = "20260101T000000Z-00000001", "20260102T000000Z-00000002", "20260103T000000Z-00000003"


@pytest.fixture()
def client(tmp_path) -> Client:
    return Client.open(B.write_bundle(tmp_path, V1, make_parts(n_items=200, n_cold=10)), index_class=INDEX_CLASS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    parts, shop, rec = trained_parts()
    path = B.write_bundle(tmp_path_factory.mktemp("trained"), None, parts)
    return Client.open(path, index_class=INDEX_CLASS), shop, rec


def exact_top(client: Client, item_id: str, k: int) -> list[str]:
    """Brute-force ranking over the stored vectors (what the index approximates)."""
    snap = client._snapshot
    row = snap.index_row_list[snap.position[item_id]]
    index = snap.warm_index
    scores, rows = index.search(index.query_vectors([row]), snap.n_rows)
    return [snap.item_ids[snap.pos_of_row[r]] for r in rows[0].tolist() if r >= 0 and r != row][:k]


# --------------------------------------------------------------------------- basic queries
def test_similar_returns_k_ranked_neighbors_with_metadata(client):
    result = client.similar("item-0050", k=10)
    assert len(result) == 10 and all(isinstance(n, Neighbor) for n in result)
    assert [n.rank for n in result] == list(range(1, 11))
    assert "item-0050" not in [n.item_id for n in result]
    scores = [n.score for n in result]
    assert scores == sorted(scores, reverse=True)
    items = client._snapshot
    for n in result:
        pos = items.position[n.item_id]
        assert n.category == items.category_names[pos] and n.brand == items.brand_names[pos]
        assert n.in_stock == items.stock[pos] and n.price == items.prices[pos]
        assert set(n.why["query_attention"]) <= {"item_id", "category", "brand", "price_tier"}
        assert abs(sum(n.why["query_attention"].values()) - 1) < 1e-3
        assert set(n.why["shared"]) <= {"category", "brand", "price_tier"}
    if INDEX_CLASS.__name__ == "ExactIndex":
        assert [n.item_id for n in result] == exact_top(client, "item-0050", 10)


def test_shared_features_are_the_ones_the_items_have_in_common(client):
    snap = client._snapshot
    for n in client.similar("item-0050", k=20):
        mine, theirs = snap.codes_list[snap.position["item-0050"]], snap.codes_list[snap.position[n.item_id]]
        assert n.why["shared"] == [f for f, a, b in zip(snap.feature_names, mine, theirs) if a and a == b]
        if "category" in n.why["shared"]:
            assert n.category == client.similar("item-0050", k=1, same_category=True)[0].category


def same_results(a: list[list[Neighbor]], b: list[list[Neighbor]]) -> bool:
    """Equal up to float rounding of the scores (batched matrix products round differently)."""
    return [[(n.item_id, n.rank, n.why) for n in r] for r in a] == [[(n.item_id, n.rank, n.why) for n in r] for r in b] \
        and np.allclose([n.score for r in a for n in r], [n.score for r in b for n in r], rtol=1e-4, atol=1e-5)


def test_similar_batch_equals_single_queries(client):
    ids = ["item-0050", "item-0003", "item-0120", "item-0050"]  # a query-only item and a repeat included
    batch = client.similar_batch(ids, k=7)
    assert same_results(batch, [client.similar(i, k=7) for i in ids])
    filtered = client.similar_batch(ids, k=5, same_category=False, in_stock_only=True)
    assert same_results(filtered, [client.similar(i, k=5, same_category=False, in_stock_only=True) for i in ids])
    assert client.similar_batch([], k=3) == []
    with pytest.raises(TypeError, match="unknown filter"):
        client.similar_batch(ids, k=3, colour="red")


def test_batch_as_arrays_holds_the_same_results(client):
    ids = ["item-0050", "item-0003", "item-0120", "item-0050"]
    for filters in ({}, {"same_category": True, "in_stock_only": True}, {"exclude": ["item-0004"]}):
        objects = client.similar_batch(ids, k=6, **filters)
        arrays = client.similar_batch(ids, k=6, as_arrays=True, **filters)
        assert arrays.item_ids.shape == arrays.scores.shape == (len(ids), 6)
        assert arrays.counts.tolist() == [len(r) for r in objects]
        for j, result in enumerate(objects):
            assert arrays.item_ids[j, :len(result)].tolist() == [n.item_id for n in result]
            np.testing.assert_allclose(arrays.scores[j, :len(result)], [n.score for n in result], rtol=1e-5)
            assert (arrays.item_ids[j, len(result):] == "").all() and np.isnan(arrays.scores[j, len(result):]).all()
    # fewer matches than k: padded, and counted
    few = client.similar_batch(["item-0050"], k=500, as_arrays=True)
    assert few.counts[0] == len(client.similar("item-0050", k=500)) < 500
    empty = client.similar_batch([], k=3, as_arrays=True)
    assert empty.item_ids.shape == (0, 3) and empty.counts.shape == (0,)


def test_unknown_item_is_a_clear_key_error(client):
    with pytest.raises(UnknownItemError) as err:
        client.similar("no-such-item")
    assert isinstance(err.value, KeyError)
    assert "no-such-item" in str(err.value) and "similar_to_new_item" in str(err.value)
    with pytest.raises(UnknownItemError):
        client.similar_batch(["item-0050", "nope"])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        client.similar("item-0050", k=0)


def test_items_without_training_purchases_are_queried_by_side_features(client):
    snap = client._snapshot
    result = client.similar("item-0003", k=10)  # index_row -1
    assert len(result) == 10 and result[0].why["query"].startswith("side features")
    query_only = {snap.item_ids[i] for i in range(10)}
    for item in ("item-0050", "item-0120"):
        assert not query_only & {n.item_id for n in client.similar(item, k=189)}  # never returned
    assert len(client.similar("item-0050", k=500)) == 189  # every other indexed item, no more


# --------------------------------------------------------------------------- filters
def _expected_matches(client, predicate) -> int:
    snap = client._snapshot
    return sum(1 for pos in snap.pos_of_row if predicate(pos))


@pytest.mark.parametrize("anchor", ["item-0050", "item-0004"])
def test_filters_hold_and_still_return_k_results(client, anchor):
    check_filters(client, anchor)


@pytest.mark.skipif(IndexConfig is None, reason="needs recsys.serving.index")
def test_filters_return_k_results_from_a_product_quantised_index(tmp_path):
    """PQ indexes take no FAISS IDSelector: the index over-fetches, and k results must still come back."""
    parts = make_parts(n_items=200, n_cold=10)
    items, queries = parts.indexes["warm"].candidate_vectors(), parts.indexes["warm"].query_vectors(np.arange(190))
    parts.indexes["warm"] = INDEX_CLASS.build(items, queries, IndexConfig(factory="PQ4x4", query_factory=None,
                                                                          recall_queries=0))
    client = Client.open(B.write_bundle(tmp_path, V1, parts), index_class=INDEX_CLASS)
    for anchor in ("item-0050", "item-0004"):
        check_filters(client, anchor)


def check_filters(client: Client, anchor: str) -> None:
    snap = client._snapshot
    q = snap.position[anchor]
    cat, brand, price = snap.category_names[q], snap.brand_names[q], snap.prices[q]
    cases = {
        "in_stock_only": (dict(in_stock_only=True), lambda p: snap.stock[p]),
        "same_category": (dict(same_category=True), lambda p: snap.category_names[p] == cat),
        "other_category": (dict(same_category=False), lambda p: snap.category_names[p] != cat),
        "other_brand": (dict(same_brand=False), lambda p: snap.brand_names[p] != brand),
        "price_range": (dict(min_price=20, max_price=40),
                        lambda p: snap.prices[p] is not None and 20 <= snap.prices[p] <= 40),
        "price_ratio": (dict(price_ratio=(0.5, 1.5)),
                        lambda p: snap.prices[p] is not None and 0.5 * price <= snap.prices[p] <= 1.5 * price),
        "combined": (dict(in_stock_only=True, same_category=True, max_price=80),
                     lambda p: snap.stock[p] and snap.category_names[p] == cat and snap.prices[p] is not None
                     and snap.prices[p] <= 80),
    }
    for name, (filters, predicate) in cases.items():
        matching = _expected_matches(client, lambda p: predicate(p) and snap.item_ids[p] != anchor)
        for k in (5, 20, 60):
            result = client.similar(anchor, k=k, **filters)
            assert len(result) == min(k, matching), (name, k, matching)
            assert all(predicate(snap.position[n.item_id]) for n in result), name
            assert anchor not in {n.item_id for n in result}


def test_exclude_and_same_brand(client):
    first = [n.item_id for n in client.similar("item-0050", k=5)]
    assert first[0] not in {n.item_id for n in client.similar("item-0050", k=5, exclude=first[0])}
    result = client.similar("item-0050", k=5, exclude=first[:3] + ["unknown-id"])
    assert len(result) == 5 and not set(first[:3]) & {n.item_id for n in result}
    assert [n.item_id for n in result][:2] == first[3:]
    snap = client._snapshot
    branded = next(snap.item_ids[p] for p in snap.pos_of_row if snap.brand_names[p] is not None)
    brand = snap.brand_names[snap.position[branded]]
    assert {n.brand for n in client.similar(branded, k=10, same_brand=True)} == {brand}
    no_brand = next(snap.item_ids[p] for p in snap.pos_of_row if snap.brand_names[p] is None)
    with pytest.raises(ValueError, match="same_brand=True needs the query's brand"):
        client.similar(no_brand, same_brand=True)
    no_price = next(snap.item_ids[p] for p in snap.pos_of_row if snap.prices[p] is None)
    with pytest.raises(ValueError, match="price_ratio needs the query's price"):
        client.similar(no_price, price_ratio=(0.5, 2))
    with pytest.raises(ValueError, match="price_ratio"):
        client.similar("item-0050", price_ratio=(2, 1))
    with pytest.raises(ValueError, match="min_price 5 is above max_price 1"):
        client.similar("item-0050", min_price=5, max_price=1)


def test_filter_masks_are_cached_per_filter(client):
    client.similar("item-0050", k=5, in_stock_only=True)
    masks = dict(client._snapshot.masks)
    client.similar("item-0060", k=5, in_stock_only=True)
    assert client._snapshot.masks.keys() == masks.keys()
    assert len(masks) == 1


# --------------------------------------------------------------------------- cold start
def test_new_item_query_uses_side_features(client):
    result = client.similar_to_new_item(category="fruit", brand="acme", price=45.0, k=10)
    assert len(result) == 10 and result[0].why["query"] == "side features (new item)"
    assert set(result[0].why["query_attention"]) == {"category", "brand", "price_tier"}
    assert "unknown_values" not in result[0].why
    same = client.similar_to_new_item(category="fruit", k=10, same_category=True, in_stock_only=True)
    assert len(same) == 10 and all(n.category == "fruit" and n.in_stock for n in same)
    cheap = client.similar_to_new_item(category="fruit", price=40.0, k=5, price_ratio=(0.5, 1.0))
    assert all(20 <= n.price <= 40 for n in cheap)


def test_unseen_values_map_to_missing_and_say_so(client):
    result = client.similar_to_new_item(category="fruit", brand="never-seen", price=10.0, k=5)
    assert len(result) == 5
    assert dict(result[0].why["unknown_values"]) == {"brand": "never-seen"}
    assert "never-seen" in result[0].why["note"]
    assert "brand" not in result[0].why["query_attention"]
    nothing_known = client.similar_to_new_item(category="spaceships", brand="zork", k=5)
    assert len(nothing_known) == 5 and "no similarity signal" in nothing_known[0].why["note"]
    other = client.similar_to_new_item(category="spaceships", k=5, same_category=False)
    assert len(other) == 5
    with pytest.raises(ValueError, match="no item of this version has the category"):
        client.similar_to_new_item(category="spaceships", same_category=True)
    with pytest.raises(ValueError, match="unknown side feature"):
        client.similar_to_new_item(category="fruit", colour="red", strict=True)
    ignored = client.similar_to_new_item(category="fruit", colour="red", k=5)
    assert ignored[0].why["ignored_fields"] == ["colour"]
    # a whole catalogue row: what is not a side feature of this version is ignored and named
    row = {"item_id": "NEW-1", "category": "fruit", "brand": "never-seen", "price": "10.0", "title": "Kiwi",
           "in_stock": True, "attributes": {"origin": "NZ"}}
    from_row = client.similar_to_new_item(row, k=5)
    assert [n.item_id for n in from_row] == [n.item_id for n in result]
    assert from_row[0].why["ignored_fields"] == ["in_stock", "item_id", "origin", "title"]
    with pytest.raises(ValueError, match="unknown side feature"):
        client.similar_to_new_item(row, strict=True)
    with pytest.raises(ValueError, match="price must be a finite number"):
        client.similar_to_new_item(category="fruit", price=-1.0)


def test_trained_model_serves_warm_and_new_items(trained):
    import pandas as pd

    client, shop, rec = trained
    items = shop.items.set_index("item_id")
    warm_id = next(i for i in shop.items["item_id"] if client._snapshot.index_row_list[client._snapshot.position[i]] >= 0)
    result = client.similar(warm_id, k=10)
    assert len(result) == 10 and "item_id" in result[0].why["query_attention"]
    # the index ranks as the recommender does
    if INDEX_CLASS.__name__ == "ExactIndex":
        pos = client._snapshot.position[warm_id]
        scores = rec.score_warm(np.array([pos]))[0]
        snap = client._snapshot
        candidates = np.array(snap.pos_of_row)
        best = candidates[np.argsort(-scores[candidates], kind="stable")]
        assert [n.item_id for n in result] == [snap.item_ids[p] for p in best if p != pos][:10]
    # a brand-new product described like a catalogue item: the shipped cold scorer ranks what is bought
    # with such items (its planted community, which mixes categories) and its own category, both well
    # above chance on this tiny model (300 items, 4 walks per item)
    community = dict(zip(shop.items["item_id"], shop.item_community))
    chance_community = 10 * np.mean([(shop.item_community == c).mean() for c in shop.item_community])
    shares, community_shares = [], []
    for item_id in shop.items["item_id"][:300:15]:
        row = items.loc[item_id]
        new = client.similar_to_new_item(category=row["category"], brand=row["brand"], k=10, color=row["color"],
                                         price=None if pd.isna(row["price"]) else float(row["price"]))
        assert len(new) == 10 and new[0].why["query"] == "side features (new item)"
        shares.append(sum(n.category == row["category"] for n in new))
        community_shares.append(sum(community[n.item_id] == community[item_id] for n in new))
    assert np.mean(shares) >= 2 * 10 / 30  # chance: 10 neighbours / 30 categories
    assert np.mean(community_shares) >= 2 * chance_community
    for item_id in shop.new_item_ids[:3]:  # in the catalogue, never bought: answered by side features
        assert len(client.similar(item_id, k=5)) == 5


# --------------------------------------------------------------------------- registry and reloading
def test_from_registry_without_production_says_what_to_do(engine):
    with pytest.raises(NoVersionError, match="recsys train"):
        Client.from_registry(engine=engine, index_class=INDEX_CLASS)


def test_refresh_swaps_only_complete_versions(engine, tmp_path):
    R.publish(engine, tmp_path, make_parts(n_items=60, n_cold=5, seed=1), V1, alias="production")
    client = Client.from_registry(engine=engine, refresh_interval_s=None, index_class=INDEX_CLASS)
    assert client.version == V1 and client.refresh() is False
    R.publish(engine, tmp_path, make_parts(n_items=60, n_cold=5, seed=2), V2, alias="production")
    assert client.refresh() is True and client.version == V2
    R.publish(engine, tmp_path, make_parts(n_items=60, n_cold=5, seed=3), V3, alias="production")
    victim = tmp_path / V3 / "items" / "price.npy"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    with pytest.raises(B.BundleCorruptError, match="price.npy"):
        client.refresh()
    assert client.version == V2 and len(client.similar("item-0010", k=3)) == 3  # still serving


def test_queries_from_threads_never_fail_while_the_alias_moves(engine, tmp_path):
    versions = [V1, V2, V3]
    for seed, version in enumerate(versions):
        R.publish(engine, tmp_path, make_parts(n_items=150 + 10 * seed, n_cold=5, seed=seed), version, alias=None)
    R.move_alias(engine, "production", V1)
    client = Client.from_registry(engine=engine, refresh_interval_s=0.01, index_class=INDEX_CLASS)
    seen: set[str] = set()
    errors: list[BaseException] = []
    stop_moving = threading.Event()

    def query(worker: int) -> None:
        try:
            for i in range(2000):
                item = f"item-{(worker * 37 + i) % 150:04d}"
                result = client.similar(item, k=5, in_stock_only=(i % 3 == 0))
                assert len(result) == 5
                if i % 50 == 0:
                    assert len(client.similar_batch([item, "item-0001"], k=3)[1]) == 3
                seen.add(client.version)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def move() -> None:
        for n in range(10):
            R.move_alias(engine, "production", versions[(n + 1) % 3], f"move {n}")
            time.sleep(0.05)
        stop_moving.set()

    threads = [threading.Thread(target=query, args=(w,)) for w in range(4)] + [threading.Thread(target=move)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    client.close()
    assert not errors, errors[0]
    assert stop_moving.is_set() and client.last_refresh_error is None
    assert len(seen) >= 2  # the client followed the alias while serving
    assert len(R.alias_history(engine, "production")) == 11


def test_patch_version_makes_a_new_item_queryable(engine, tmp_path):
    import pandas as pd

    R.publish(engine, tmp_path, make_parts(n_items=60, n_cold=5), V1, alias="production")
    client = Client.from_registry(engine=engine, refresh_interval_s=None, index_class=INDEX_CLASS)
    with pytest.raises(UnknownItemError):
        client.similar("launch-1")
    new = pd.DataFrame({"item_id": ["launch-1"], "category": ["dairy"], "brand": ["bolt"], "price": [12.0],
                        "in_stock": [True]})
    patch = R.publish_patch(engine, tmp_path, new, index_class=INDEX_CLASS)
    assert client.refresh() and client.version == patch
    result = client.similar("launch-1", k=5, same_category=True)
    assert len(result) == 5 and all(n.category == "dairy" for n in result)
    assert result[0].why["query"].startswith("side features")
    described = client.similar_to_new_item(category="dairy", brand="bolt", price=12.0, k=5, same_category=True)
    assert [(n.item_id, n.score) for n in result] == [(n.item_id, n.score) for n in described]


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def serving_cli(cli):
    from recsys.app.cli import main
    from recsys.app.cli_serving import register

    if "similar" not in main.commands:
        register(main)
    return cli


def test_cli_similar(engine, serving_cli, tmp_path, monkeypatch):
    code, out = serving_cli("similar", "item-0050")
    assert code == 2 and "No production version yet" in out and "recsys train" in out
    R.publish(engine, tmp_path, make_parts(n_items=60, n_cold=5), V1, alias="production")
    code, out = serving_cli("similar", "item-0050", "-k", "3", "--in-stock-only")
    assert code == 0 and f"version {V1}" in out and len([l for l in out.splitlines() if ". item-" in l]) == 3
    code, out = serving_cli("similar", "--category", "fruit", "--brand", "nobody", "--price", "20", "-k", "4")
    assert code == 0 and "new product" in out and "nobody" in out
    assert len([l for l in out.splitlines() if ". item-" in l]) == 4
    code, out = serving_cli("similar", "missing-item")
    assert code == 2 and "similar_to_new_item" in out
    code, out = serving_cli("similar")
    assert code == 2 and "--category" in out
    code, out = serving_cli("similar", "item-0050", "--same-category", "--json")
    assert code == 0 and '"neighbors"' in out
