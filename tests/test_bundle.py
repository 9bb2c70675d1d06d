"""Bundles: round trip, checksums of every file, atomic and immutable versions, patches.

Also home of the small helpers the registry and client tests share (`make_parts`,
`trained_parts`, `INDEX_CLASS`): they import them from this module.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.serving import bundle as B
from recsys.serving import patch as P
from recsys.serving import store as S
from recsys.serving.index import IndexConfig, SimilarityIndex
from recsys.vectors import Scorer, price_tier_codes

INDEX_CLASS = SimilarityIndex


def index_config(n_items: int):
    # tiny catalogues: an 8-bit scalar codec trains in milliseconds (PQ's k-means would take seconds)
    return IndexConfig(factory="SQ8", query_factory="SQ8", recall_queries=0)


CATEGORIES = ["<missing>", "fruit", "dairy", "bread", "snacks"]
BRANDS = ["<missing>", "acme", "bolt", "crown"]


def make_parts(n_items: int = 120, dim: int = 8, seed: int = 0, n_cold: int = 10, scorer: str = "cosine",
               cold_scorer: str | None = None, metrics: dict | None = None) -> B.BundleParts:
    """Bundle parts from random arrays: items 0..n_cold-1 have no index row (query-only)."""
    rng = np.random.default_rng(seed)
    names = ["category", "brand", "price_tier"]
    values = {"category": CATEGORIES, "brand": BRANDS, "price_tier": ["<missing>", "tier1", "tier2", "tier3"]}
    tables = {n: rng.normal(size=(len(v), dim)).astype(np.float32) for n, v in values.items()}
    for t in tables.values():
        t[0] = 0.0
    category = rng.integers(1, len(CATEGORIES), n_items).astype(np.int32)
    brand = rng.integers(0, len(BRANDS), n_items).astype(np.int32)
    price = rng.uniform(1, 100, n_items).astype(np.float32)
    price[::17] = np.nan
    edges = np.array([30.0, 60.0])
    codes = np.stack([category, brand, price_tier_codes(price, edges)], axis=1).astype(np.int32)
    index_row = np.full(n_items, -1, np.int32)
    index_row[n_cold:] = np.arange(n_items - n_cold)
    model = B.ModelTables(feature_names=names, feature_values=values, side_tables=tables, price_tier_edges=edges,
                          config={"mode": "eges", "dim": dim, "cold_start": "id_dropout"})
    # item vectors: side average + noise, so same-category items are near each other
    vectors = B.cold_start_vectors(model, codes) + 0.3 * rng.normal(size=(n_items, dim)).astype(np.float32)
    rows = np.arange(n_cold, n_items)
    warm = {"kind": scorer, "beta": 0.0}
    indexes = {"warm": INDEX_CLASS.build(Scorer.from_dict(warm).query_matrix(vectors[rows]) if scorer == "cosine"
                                         else vectors[rows], Scorer.from_dict(warm).query_matrix(vectors[rows]),
                                         index_config(len(rows)))}
    scorers = {"warm": warm}
    if cold_scorer:
        cold = {"kind": cold_scorer, "beta": 0.0}
        indexes["cold"] = INDEX_CLASS.build(vectors[rows], Scorer.from_dict(cold).query_matrix(vectors[rows]),
                                            index_config(len(rows)))
        scorers["cold"] = cold
    items = B.ItemTable(
        item_ids=np.array([f"item-{i:04d}" for i in range(n_items)], dtype=np.str_),
        category=category, category_values=CATEGORIES, brand=brand, brand_values=BRANDS, price=price,
        in_stock=rng.random(n_items) < 0.8, feature_codes=codes,
        attention_logits=rng.normal(size=(n_items, 1 + len(names))).astype(np.float32), index_row=index_row)
    return B.BundleParts(items=items, model=model, indexes=indexes, scorers=scorers,
                         metrics=metrics if metrics is not None else
                         {"warm": {"recall": {"20": 0.30}}, "cold": {"recall": {"20": 0.10}}},
                         watermark={"max_purchased_at": 1_700_000_000, "n_items": n_items})


def trained_parts(metrics: dict | None = None):
    """Parts of a real (tiny) EGES fit on a synthetic shop; returns (parts, shop, recommender)."""
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.embed.train import TrainConfig
    from recsys.recommenders.eges import EGESRecommender, ScorerConfig

    shop = generate_shop(ShopConfig(n_items=300, n_users=200, n_baskets=1500))
    ds = shop.to_dataset()
    rec = EGESRecommender(TrainConfig(dim=16, walks_per_node=4, num_threads=1), ScorerConfig(warm="cosine"))
    rec.fit(ds)
    parts = B.parts_from_model(rec.trained, ds, rec.warm_scorer, rec.cold_scorer, log_popularity=rec.log_popularity,
                               index_config=index_config(ds.n_items), metrics=metrics or {}, index_class=INDEX_CLASS)
    return parts, shop, rec


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- round trip
def test_round_trip_keeps_every_array_and_search_results(tmp_path):
    parts = make_parts(cold_scorer="dot")
    path = B.write_bundle(tmp_path, None, parts)
    assert path.parent == tmp_path and S.parse_version(path.name)[1] == 0
    bundle = B.open_bundle(path, index_class=INDEX_CLASS)
    got, want = bundle.parts, parts
    for name in ("item_ids", "category", "brand", "price", "in_stock", "feature_codes", "attention_logits",
                 "index_row"):
        np.testing.assert_array_equal(getattr(got.items, name), getattr(want.items, name), err_msg=name)
    assert got.items.category_values == want.items.category_values
    assert got.model.feature_names == want.model.feature_names
    assert got.model.feature_values == want.model.feature_values
    for name in want.model.feature_names:
        np.testing.assert_array_equal(got.model.side_tables[name], want.model.side_tables[name])
    np.testing.assert_array_equal(got.model.price_tier_edges, want.model.price_tier_edges)
    assert got.scorers == want.scorers and set(got.indexes) == {"warm", "cold"}
    queries = want.indexes["warm"].query_vectors(np.arange(5))
    np.testing.assert_array_equal(got.indexes["warm"].search(queries, 5)[1], want.indexes["warm"].search(queries, 5)[1])
    manifest = bundle.manifest
    assert manifest["format_version"] == B.FORMAT_VERSION and manifest["version"] == path.name
    assert manifest["row_counts"] == {"items": 120, "indexed_items": 110, "side_features": 3}
    assert manifest["metrics"]["warm"]["recall"]["20"] == 0.30
    assert manifest["data_watermark"]["n_items"] == 120
    listed = set(manifest["files"])
    assert listed == {p.relative_to(path).as_posix() for p in _files(path)} - {"manifest.json"}
    assert all(p.suffix in B.ALLOWED_SUFFIXES for p in _files(path))


def test_bundle_files_load_without_pickle(tmp_path):
    path = B.write_bundle(tmp_path, None, make_parts())
    for file in _files(path):
        if file.suffix == ".npy":
            assert np.load(file, allow_pickle=False).dtype != object, file
        elif file.suffix == ".json":
            json.loads(file.read_text())


def test_parts_from_a_trained_model_index_its_walked_items(tmp_path):
    # the cold start, scorer, attention and price-tier maths of training and serving are one code
    # (recsys/vectors.py): there is no second copy to compare, only the index to check
    parts, shop, rec = trained_parts()
    trained = rec.trained
    assert parts.items.index_row.max() + 1 == int((trained.item_counts > 0).sum())
    opened = B.open_bundle(B.write_bundle(tmp_path, None, parts), index_class=INDEX_CLASS)
    assert opened.parts.items.item_ids.tolist() == shop.items["item_id"].tolist()


# --------------------------------------------------------------------------- damage
def test_a_flipped_byte_in_any_file_is_detected(tmp_path):
    path = B.write_bundle(tmp_path, None, make_parts(n_items=40, n_cold=4, cold_scorer="dot"))
    files = _files(path)
    assert len(files) >= 14
    for file in files:
        original = file.read_bytes()
        for offset in sorted({0, len(original) // 2, len(original) - 1}):
            damaged = bytearray(original)
            damaged[offset] ^= 0x01
            file.write_bytes(bytes(damaged))
            with pytest.raises(B.BundleCorruptError) as err:
                B.open_bundle(path, index_class=INDEX_CLASS)
            rel = file.relative_to(path).as_posix()
            assert err.value.file == rel and rel in str(err.value)
        file.write_bytes(original)
    B.open_bundle(path, index_class=INDEX_CLASS)  # intact again


def test_missing_extra_and_truncated_files_are_refused(tmp_path):
    path = B.write_bundle(tmp_path, None, make_parts(n_items=30, n_cold=3))
    victim = path / "items" / "price.npy"
    data = victim.read_bytes()
    victim.write_bytes(data[:-4])
    with pytest.raises(B.BundleCorruptError, match="items/price.npy.*size"):
        B.open_bundle(path, verify=False, index_class=INDEX_CLASS)  # sizes are checked even without checksums
    victim.unlink()
    with pytest.raises(B.BundleCorruptError, match="items/price.npy: missing"):
        B.open_bundle(path, index_class=INDEX_CLASS)
    victim.write_bytes(data)
    (path / "items" / "evil.npy").write_bytes(b"x")
    with pytest.raises(B.BundleCorruptError, match="evil.npy: a file the manifest does not list"):
        B.open_bundle(path, index_class=INDEX_CLASS)
    (path / "items" / "evil.npy").unlink()
    (path / "manifest.json").unlink()
    with pytest.raises(B.BundleCorruptError, match="manifest.json: missing"):
        B.open_bundle(path, index_class=INDEX_CLASS)


def test_a_pickled_array_is_refused(tmp_path):
    """Even with a matching checksum, an object array is never unpickled."""
    path = B.write_bundle(tmp_path, None, make_parts(n_items=30, n_cold=3))
    victim = path / "items" / "item_ids.npy"
    np.save(victim, np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    manifest = json.loads((path / "manifest.json").read_text())
    sha, size = B._sha256_file(victim)
    manifest["files"]["items/item_ids.npy"] = {"sha256": sha, "size": size}
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    manifest["manifest_sha256"] = B.hashlib.sha256(B._canonical_json(body)).hexdigest()
    (path / "manifest.json").write_bytes(B._canonical_json(manifest))
    with pytest.raises(B.BundleCorruptError, match="item_ids.npy: cannot be read as an array"):
        B.open_bundle(path, index_class=INDEX_CLASS)


# --------------------------------------------------------------------------- atomic, immutable
def test_versions_are_immutable_and_staging_is_cleaned_up(tmp_path):
    parts = make_parts(n_items=30, n_cold=3)
    path = B.write_bundle(tmp_path, "20260101T000000Z-00000001", parts)
    before = {p: p.read_bytes() for p in _files(path)}
    with pytest.raises(S.BundleExistsError, match="immutable"):
        B.write_bundle(tmp_path, "20260101T000000Z-00000001", make_parts(n_items=30, n_cold=3, seed=1))
    assert {p: p.read_bytes() for p in _files(path)} == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging folder left


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    parts = make_parts(n_items=30, n_cold=3)

    def fail(step):
        if step == "wrote index/warm":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        B.write_bundle(tmp_path, None, parts, on_step=fail)
    assert list(tmp_path.iterdir()) == []


def test_write_reports_every_durable_step(tmp_path):
    steps = []
    B.write_bundle(tmp_path, None, make_parts(n_items=30, n_cold=3), on_step=steps.append)
    assert steps[0].startswith("wrote items/") and steps[-3:] == ["wrote manifest", "staged", "renamed"]


def test_parts_are_validated_before_writing(tmp_path):
    parts = make_parts(n_items=30, n_cold=3)
    parts.items.index_row[5] = 0  # two items on row 0
    with pytest.raises(ValueError, match="index_row"):
        B.write_bundle(tmp_path, None, parts)
    with pytest.raises(ValueError, match="invalid version name"):
        B.write_bundle(tmp_path, "../escape", make_parts(n_items=30, n_cold=3))


def test_version_names_sort_in_time_and_patches_follow_their_base():
    a = S.new_version_name(b"x")
    base, n = S.parse_version(a)
    assert n == 0 and base == a
    names = ["20260102T000000Z-aaaaaaaa", "20260101T000000Z-bbbbbbbb.p10", "20260101T000000Z-bbbbbbbb",
             "20260101T000000Z-bbbbbbbb.p9"]
    assert sorted(names, key=S.version_sort_key) == [names[2], names[3], names[1], names[0]]
    assert S.patch_version_name("20260101T000000Z-bbbbbbbb.p9", names) == "20260101T000000Z-bbbbbbbb.p11"
    assert S.patch_version_name(names[0], names) == "20260102T000000Z-aaaaaaaa.p1"
    with pytest.raises(ValueError, match="not a version name"):
        S.parse_version("latest")


# --------------------------------------------------------------------------- patches
def test_extend_with_new_items_appends_query_only_items(tmp_path):
    bundle = B.open_bundle(B.write_bundle(tmp_path, None, make_parts(n_items=50, n_cold=5)), index_class=INDEX_CLASS)
    new = pd.DataFrame({"item_id": ["item-0001", "new-1", "new-2", "new-2"],
                        "category": ["fruit", "fruit", "garden", "garden"],
                        "brand": [None, "zeta", "acme", "acme"], "price": [1.0, 45.0, None, None],
                        "in_stock": [True, False, True, True]})
    parts = P.extend_with_new_items(bundle, new)
    items = parts.items
    assert len(items) == 52 and items.item_ids[-2:].tolist() == ["new-1", "new-2"]
    assert items.index_row[-2:].tolist() == [-1, -1]  # not candidates until the next training
    assert items.category_values[-1] == "garden" and items.brand_values == BRANDS + ["zeta"]
    # model codes: fruit known, garden unseen -> 0; zeta unseen -> 0; 45.0 -> tier 2; no price -> 0
    assert items.feature_codes[-2:].tolist() == [[1, 0, 2], [0, 1, 0]]
    assert parts.kind == "patch" and parts.parent_version == bundle.version
    assert parts.indexes is bundle.parts.indexes
    patched = B.write_bundle(tmp_path, S.patch_version_name(bundle.version, [bundle.version]), parts)
    assert patched.name == bundle.version + ".p1"
    reopened = B.open_bundle(patched, index_class=INDEX_CLASS)
    assert reopened.manifest["parent_version"] == bundle.version and reopened.manifest["kind"] == "patch"
    assert P.extend_with_new_items(reopened, new) is None  # nothing new any more
    with pytest.raises(ValueError, match="category"):
        P.extend_with_new_items(reopened, pd.DataFrame({"item_id": ["x"]}))
