"""The hourly refresh folds purchases since the version in: new items become returnable, old ones keep their vectors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.blend import CoPurchases
from recsys.data.cooccurrence import top_partners
from recsys.serving.index import IndexConfig, SimilarityIndex


def test_index_with_items_keeps_old_codes_and_finds_new_rows():
    rng = np.random.default_rng(0)
    n, d = 3000, 17
    items = rng.normal(size=(n, d)).astype(np.float32)
    items[:, -1] = np.log1p(rng.integers(1, 50, n))  # a prior column
    queries = rng.normal(size=(n, d)).astype(np.float32)
    queries[:, -1] = 0.3
    basis = rng.normal(size=(n, 4)).astype(np.float32)
    index = SimilarityIndex.build(items, queries, IndexConfig(recall_queries=0), query_basis=basis)
    new_items = rng.normal(size=(5, d)).astype(np.float32)
    new_items[:, -1] = 1.0
    new_queries = rng.normal(size=(5, d)).astype(np.float32)
    new_queries[:, -1] = 0.3
    new_basis = rng.normal(size=(5, 4)).astype(np.float32)
    bigger = index.with_items(new_items, new_queries, new_basis)
    assert bigger.n_items == n + 5 and index.n_items == n and bigger.meta["added_rows"] == 5
    np.testing.assert_array_equal(bigger.candidate_vectors(np.arange(n)), index.candidate_vectors())
    np.testing.assert_array_equal(bigger.query_vectors(np.arange(n), basis=basis),
                                  index.query_vectors(np.arange(n), basis=basis))
    # the new rows are coded as finely as the old ones were
    def error(got, want):
        return float(((got - want) ** 2).sum(axis=1).mean())

    old_q = error(index.query_vectors(np.arange(200), basis=basis[:200]), queries[:200])
    assert error(bigger.query_vectors(np.arange(n, n + 5), basis=new_basis), new_queries) < 3 * old_q
    old_c = error(index.candidate_vectors(np.arange(200)), items[:200])
    assert error(bigger.candidate_vectors(np.arange(n, n + 5)), new_items) < 3 * old_c
    # and found where exact search over all rows finds them
    probe = np.concatenate([new_items[:, :-1] * 5, np.zeros((5, 1), np.float32)], axis=1)
    exact = np.argmax(probe @ np.concatenate([items, new_items]).T, axis=1)
    _, ids = bigger.search(probe, 5)
    assert sum(exact[i] in ids[i] for i in range(5)) >= 4 and any(e >= n for e in exact)
    with pytest.raises(ValueError, match="query vectors"):
        index.with_items(new_items)


def test_copurchases_with_added_equal_lists_built_from_the_summed_counts():
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    old = sp.random(30, 40, density=0.3, random_state=2, format="csr") * 10
    old.data = np.round(old.data) + 1
    lists = top_partners(old, 5)
    anchors = rng.integers(0, 34, 60)
    partners = rng.integers(0, 45, 60)
    counts = rng.integers(1, 4, 60).astype(float)
    got = lists.with_added(anchors, partners, counts, n_anchors=34, n_candidates=45, top_m=5)
    # what the lists hold plus the additions, cut to 5: old entries beyond the old top 5 are gone for good
    kept = sp.csr_matrix((np.expm1(lists.weight.astype(np.float64)), lists.items,
                          lists.indptr), shape=(30, 40))
    kept.resize((34, 45))
    total = kept + sp.csr_matrix((counts, (anchors, partners)), shape=(34, 45))
    want = top_partners(total.tocsr(), 5)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_allclose(got.weight, want.weight, rtol=1e-5)
    assert isinstance(got, CoPurchases) and got.n_candidates == 45


# --------------------------------------------------------------------------- end to end on Postgres
CONFIG = {"train": {"dim": 16, "walks_per_node": 6, "epochs": 2, "num_threads": 1}, "index_check": {"enabled": False},
          "index": {"recall_queries": 0}, "blend": {"validation_queries": 1000},
          "evaluation": {"max_queries": 500}}


@pytest.fixture()
def published(engine, tmp_path):
    """A synthetic shop in Postgres, a version trained on all but its last 10% of purchases, in production."""
    from recsys.data.dataset import subset_purchases
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.ingest.extract import extract_dataset
    from recsys.ingest.load import load_frames
    from recsys.ingest.loaders.generic import read_frames
    from recsys.jobs import pipeline
    from recsys.serving import registry as R

    shop = generate_shop(ShopConfig(seed=5, n_items=400, n_users=600, n_categories=8, n_baskets=5000,
                                    mean_basket_size=4.0, launched_share=0.3))
    items_csv, purchases_csv = shop.write_csv(tmp_path / "shop")
    load_frames(engine, read_frames(items_csv, purchases_csv))
    ds = extract_dataset(engine)
    cutoff = int(np.quantile(ds.purchase_time, 0.9))
    train = subset_purchases(ds, ds.purchase_time <= cutoff)
    config = pipeline.PipelineConfig.from_dict(CONFIG)
    shipped = pipeline.train_final(train, config, progress=False)
    parts = pipeline.build_parts(shipped, train, config, metrics={})
    root = tmp_path / "artifacts"
    version = R.publish(engine, root, parts, alias="production")
    return engine, root, version, ds, cutoff


def test_refresh_folds_in_items_first_bought_since_the_version(published, tmp_path, cli, prefect_harness,
                                                              monkeypatch):
    from recsys import Client
    from recsys.ingest.load import load_frames
    from recsys.ingest.loaders.generic import read_frames
    from recsys.jobs.refresh import refresh
    from recsys.serving.bundle import open_bundle
    from recsys.serving.registry import get_version

    engine, root, version, ds, cutoff = published
    base = open_bundle(get_version(engine, version).path)
    # a product launched after the version: bought by 4 of the shop's accounts with a popular item; another
    # by one account; a third by 30 accounts that never bought before (held back until the nightly screen)
    counts = np.bincount(ds.purchase_item[ds.purchase_time <= cutoff], minlength=ds.n_items)
    popular = ds.item_ids[np.argmax(counts)]
    rare = ds.item_ids[np.flatnonzero(counts == counts[counts > 0].min())[0]]  # a companion with few partners
    regulars = np.unique(ds.user_ids[ds.purchase_user[ds.purchase_time <= cutoff]])[:6].tolist()
    when = pd.Timestamp(ds.purchase_time.max() + 3600, unit="s", tz="UTC")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "items.csv").write_text("item_id,category,brand,price\nLAUNCH-1,c001,b001,9.5\n"
                                                "SOLO-1,c001,b001,9.5\nPUSH-1,c001,b001,9.5\n")
    rows = [(regulars[u], item, when + pd.Timedelta(minutes=u), f"o-new-{u}")
            for u in range(4) for item in ("LAUNCH-1", popular, rare)]
    rows += [(regulars[4], item, when + pd.Timedelta(hours=1, minutes=d), f"o-solo-{d}")
             for d in range(3) for item in ("SOLO-1", popular)]
    rows += [(f"fresh-account-{u}", item, when + pd.Timedelta(minutes=u), f"o-push-{u}")
             for u in range(30) for item in ("PUSH-1", popular)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "purchased_at", "order_id"]).to_csv(
        tmp_path / "new" / "purchases.csv", index=False)
    load_frames(engine, read_frames(tmp_path / "new" / "items.csv", tmp_path / "new" / "purchases.csv"))

    monkeypatch.setenv("RECSYS_ARTIFACT_ROOT", str(root))
    code, out = cli("refresh")  # the hourly flow, once now
    assert code == 0 and f"production: {version}.p1" in out and "folded in" in out, out
    patch = f"{version}.p1"
    record = get_version(engine, patch).notes["refresh"]
    # every item first bought after the cutoff by 2+ accounts is folded in, and nothing else
    after = ds.purchase_time > cutoff
    known = np.zeros(ds.n_users, bool)
    known[ds.purchase_user[~after]] = True
    after &= known[ds.purchase_user]  # only accounts seen before the version count
    indexed = set(base.parts.items.item_ids[base.parts.items.index_row >= 0].tolist())
    buyers = pd.DataFrame({"user": ds.purchase_user[after], "item": ds.item_ids[ds.purchase_item[after]]})
    counts = buyers.drop_duplicates().groupby("item").size()
    expected = {i for i, c in counts.items() if c >= 2 and i not in indexed} | {"LAUNCH-1"}
    assert len(expected) > 3 and record["fresh_items"] == len(expected) and record["too_few_buyers"] >= 1
    assert record["check"]["log_likelihood_after"] > record["check"]["log_likelihood_start"]
    bundle = open_bundle(get_version(engine, patch).path)
    items = bundle.parts.items
    now_indexed = set(items.item_ids[items.index_row >= 0].tolist())
    assert now_indexed == indexed | expected and "SOLO-1" not in now_indexed and "PUSH-1" not in now_indexed
    assert record["lines_of_new_accounts_held_back"] >= 60
    # the version's items keep their vectors exactly
    n_old = len(indexed)
    np.testing.assert_array_equal(bundle.parts.indexes["warm"].candidate_vectors(np.arange(n_old)),
                                  base.parts.indexes["warm"].candidate_vectors())
    assert bundle.parts.watermark["max_purchased_at"] > base.parts.watermark["max_purchased_at"]

    client = Client.from_registry(engine=engine, refresh_interval_s=None)
    assert client.version == patch
    launch = client.similar("LAUNCH-1", k=10)
    assert len(launch) == 10 and "learned from purchases" in launch[0].why["query"]
    assert popular in [n.item_id for n in launch]  # its own evidence: bought with the popular item
    # returnable as a neighbour, ranked by its new evidence: first among a rare item's partners now
    ranked = [n.item_id for n in client.similar(rare, k=20)]
    assert "LAUNCH-1" in ranked[:10]
    assert "LAUNCH-1" in [n.item_id for n in client.similar(popular, k=client._snapshot.n_rows)]
    solo = client.similar("SOLO-1", k=5)  # one account: still answered from side features only
    assert solo[0].why["query"].startswith("side features")
    everything = client._snapshot.n_rows
    assert "SOLO-1" not in [n.item_id for n in client.similar(popular, k=everything)]
    assert refresh(engine, root)[0] is None  # nothing new the second time
    code, out = cli("refresh")
    assert code == 0 and "Nothing new" in out

    # an hour later a second account buys SOLO-1: the next refresh, rebuilt from the full version with
    # everything since, counts its two buyers together and folds it in
    later = when + pd.Timedelta(hours=3)
    pd.DataFrame([(regulars[5], item, later, "o-second") for item in ("SOLO-1", popular)],
                 columns=["user_id", "item_id", "purchased_at", "order_id"]).to_csv(
        tmp_path / "new" / "later.csv", index=False)
    load_frames(engine, read_frames(None, tmp_path / "new" / "later.csv"))
    second, again = refresh(engine, root)
    assert second == f"{version}.p2" and again["fresh_items"] == record["fresh_items"] + 1
    items = open_bundle(get_version(engine, second).path).parts.items
    assert {"SOLO-1", "LAUNCH-1"} <= set(items.item_ids[items.index_row >= 0].tolist())
    assert client.refresh()
    everything = client._snapshot.n_rows
    assert "SOLO-1" in [n.item_id for n in client.similar(popular, k=everything)]
    assert "PUSH-1" not in [n.item_id for n in client.similar(popular, k=everything)]

    # only the catalogue changes next: the patch rebuilt for it keeps every item folded in so far
    (tmp_path / "new" / "more.csv").write_text("item_id,category,brand,price\nLATER-1,c001,b001,3.0\n")
    load_frames(engine, read_frames(tmp_path / "new" / "more.csv", None))
    third, _ = refresh(engine, root)
    items = open_bundle(get_version(engine, third).path).parts.items
    assert third == f"{version}.p3" and "LATER-1" in set(items.item_ids.tolist())
    assert {"SOLO-1", "LAUNCH-1"} <= set(items.item_ids[items.index_row >= 0].tolist())
