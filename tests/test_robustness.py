"""Defences against fake purchases: distinct-user counting, per-account caps, the account screen, the attack simulator."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.accounts import AccountConfig, screen_accounts, without_excluded
from recsys.data.cooccurrence import basket_weights, copurchase_matrix
from recsys.data.graph import GraphConfig, build_item_graph
from recsys.data.sessions import make_baskets
from recsys.data.synthetic import ShopConfig, generate_shop
from recsys.evaluation.attacks import AttackConfig, choose_target, inject, promotion
from recsys.recommenders.baselines import BoughtTogetherRecommender

from tests.test_graph import make_ds

H = 3600


@pytest.fixture(scope="module")
def shop():
    return generate_shop(ShopConfig(seed=3, n_items=600, n_users=800, n_categories=10, n_baskets=5000,
                                    mean_basket_size=4.0)).to_dataset()


def brute_force_distinct(ds, half_life_days):
    """Per pair: sum over users of the heaviest weight of the user's baskets holding both."""
    baskets = make_baskets(ds)
    weights = basket_weights(ds, baskets, half_life_days)
    best = {}
    for b in range(int(baskets.max()) + 1 if len(baskets) else 0):
        lines = np.flatnonzero(baskets == b)
        user = int(ds.purchase_user[lines[0]])
        for i, j in itertools.combinations(sorted(set(ds.purchase_item[lines].tolist())), 2):
            key = (user, i, j)
            best[key] = max(best.get(key, 0.0), weights[b])
    out = np.zeros((ds.n_items, ds.n_items))
    for (_, i, j), w in best.items():
        out[i, j] += w
        out[j, i] += w
    return out


@st.composite
def small_shops(draw):
    n = draw(st.integers(1, 40))
    users = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    times = draw(st.lists(st.sampled_from([0, 60, 2 * H, 30 * H, 300 * H]), min_size=n, max_size=n))
    order = np.lexsort((times, users))
    return make_ds(np.asarray(users)[order], np.asarray(items)[order], np.asarray(times)[order], n_items=6)


@settings(max_examples=80, deadline=None)
@given(small_shops(), st.sampled_from([None, 2.0]))
def test_distinct_user_copurchases_equal_a_brute_force_count(ds, half_life):
    got = copurchase_matrix(ds, 3600, half_life, distinct_users=True).toarray()
    np.testing.assert_allclose(got, brute_force_distinct(ds, half_life), rtol=1e-9, atol=1e-12)
    # never above the basket count, and equal to it where every user bought a pair at most once
    assert np.all(got <= copurchase_matrix(ds, 3600, half_life).toarray() + 1e-9)


def test_distinct_users_survive_chunking(shop):
    from recsys.data.cooccurrence import _by_distinct_users
    import scipy.sparse as sp

    baskets = make_baskets(shop)
    n_baskets = int(baskets.max()) + 1
    x = sp.csr_matrix((np.ones(len(baskets)), (baskets, shop.purchase_item)), shape=(n_baskets, shop.n_items))
    x.sum_duplicates()
    x.data[:] = 1
    owner = np.zeros(n_baskets, np.int64)
    owner[baskets] = shop.purchase_user
    whole = _by_distinct_users(x, np.ones(n_baskets), owner)
    chunked = _by_distinct_users(x, np.ones(n_baskets), owner, max_pairs=50)  # many chunks, cut between users
    assert (whole != chunked).nnz == 0


def test_one_account_repeating_a_pair_adds_at_most_one_to_the_edge():
    # user 0 buys {0,1} in 5 orders a day apart; users 1 and 2 buy {0,2} once each
    users = [0] * 10 + [1, 1, 2, 2]
    items = [0, 1] * 5 + [0, 2, 0, 2]
    times = [d * 24 * H for d in range(5) for _ in range(2)] + [0, 0, 0, 0]
    ds = make_ds(users, items, times)
    base = dict(link_gap_s=None, user_lines_quantile=None)
    raw = build_item_graph(ds, make_baskets(ds), GraphConfig(max_user_edge_weight=None, **base)).to_scipy()
    capped = build_item_graph(ds, make_baskets(ds), GraphConfig(**base))
    assert raw[0, 1] == 5 and raw[0, 2] == 2
    assert capped.to_scipy()[0, 1] == 1 and capped.to_scipy()[0, 2] == 2
    assert capped.info["user_edges_capped"] == 1
    two_users = build_item_graph(ds, make_baskets(ds), GraphConfig(min_edge_users=2, **base)).to_scipy()
    assert two_users[0, 1] == 0 and two_users[0, 2] == 2
    with pytest.raises(ValueError, match="min_edge_users"):
        GraphConfig(min_edge_users=0).validate()
    # inverse activity: user 0's five baskets weigh 1/log2(6) each, users 1 and 2 (one basket) 1/log2(2) = 1
    weighted = build_item_graph(ds, make_baskets(ds), GraphConfig(max_user_edge_weight=None,
                                                                  user_weighting="inverse_activity", **base))
    assert weighted.to_scipy()[0, 1] == pytest.approx(5 / np.log2(6), rel=1e-6)
    assert weighted.to_scipy()[0, 2] == pytest.approx(2.0, rel=1e-6)


def test_attack_adds_only_fake_lines(shop):
    attack = inject(shop, AttackConfig(shape="bandwagon", share=0.02, seed=1))
    fake = np.isin(attack.data.purchase_user, attack.fake_users)
    assert fake.sum() == attack.n_fake_lines == len(attack.fake_users) * 6
    real = attack.data.purchase_user < shop.n_users
    assert real.sum() == shop.n_purchases
    np.testing.assert_array_equal(np.sort(attack.data.purchase_item[real]), np.sort(shop.purchase_item))
    assert attack.target == choose_target(shop, AttackConfig()) and attack.target not in set(attack.popular)
    heavy = inject(shop, AttackConfig(shape="heavy", share=0.02))
    assert len(heavy.fake_users) < len(attack.fake_users) and heavy.n_fake_lines == attack.n_fake_lines
    burst = inject(shop, AttackConfig(shape="burst", share=0.02))
    fake_times = burst.data.purchase_time[np.isin(burst.data.purchase_user, burst.fake_users)]
    assert fake_times.max() - fake_times.min() < 86_400


def test_planted_bandwagon_is_caught_and_clean_data_is_not_flagged(shop):
    clean = screen_accounts(shop)
    assert clean.n_excluded_lines == 0 and not clean.findings
    counts = BoughtTogetherRecommender()
    for shape in ("bandwagon", "burst"):
        attack = inject(shop, AttackConfig(shape=shape, share=0.05))
        screen = screen_accounts(attack.data)
        caught = np.isin(attack.fake_users, screen.excluded_users)
        assert caught.all(), f"{shape}: {caught.sum()} of {len(caught)} fake accounts caught"
        real_flagged = np.setdiff1d(screen.excluded_users, attack.fake_users)
        assert len(real_flagged) <= 0.05 * len(attack.fake_users)
        assert any(f.item == attack.target for f in screen.findings)
        record = screen.record(attack.data)
        assert record["excluded_lines"] == screen.n_excluded_lines >= attack.n_fake_lines
        assert sum(r["lines"] for r in record["by_reason"].values()) == record["excluded_lines"]
        # the attack works on raw counts and not once the accounts are left out
        warm = np.bincount(shop.purchase_item, minlength=shop.n_items) > 0
        counts.fit(attack.data)
        pushed = promotion(counts.score_warm, attack.target, attack.popular, warm)
        counts.fit(without_excluded(attack.data, screen))
        defended = promotion(counts.score_warm, attack.target, attack.popular, warm)
        counts.fit(shop)
        before = promotion(counts.score_warm, attack.target, attack.popular, warm)  # where it stood honestly
        assert pushed["share_with_target"] > before["share_with_target"] + 0.15
        assert defended["share_with_target"] <= before["share_with_target"] + 0.01


def test_heavy_accounts_are_defused_by_distinct_user_counts(shop):
    attack = inject(shop, AttackConfig(shape="heavy", share=0.05, baskets_per_heavy=40))
    warm = np.bincount(shop.purchase_item, minlength=shop.n_items) > 0
    raw, distinct = BoughtTogetherRecommender(), BoughtTogetherRecommender(distinct_users=True)
    raw.fit(attack.data)
    distinct.fit(attack.data)
    before = BoughtTogetherRecommender(distinct_users=True)
    before.fit(shop)
    honest = promotion(before.score_warm, attack.target, attack.popular, warm)["share_with_target"]
    assert promotion(raw.score_warm, attack.target, attack.popular, warm)["share_with_target"] > honest + 0.15
    assert promotion(distinct.score_warm, attack.target, attack.popular, warm)["share_with_target"] <= honest + 0.02


def test_listed_accounts_are_excluded_and_named():
    ds = make_ds(users=[0, 0, 1, 1], items=[0, 1, 0, 2], times=[0, 0, 0, 0])
    screen = screen_accounts(ds, AccountConfig(exclude_users=("u1",)))
    assert screen.excluded_users.tolist() == [1]
    assert screen.by_reason == {"listed in exclude_users": {"accounts": 1, "lines": 2}}
    kept = without_excluded(ds, screen)
    assert kept.n_purchases == 2 and set(kept.purchase_user.tolist()) == {0}
    off = screen_accounts(ds, AccountConfig(exclude_suspicious=False))
    assert off.n_excluded_lines == 0


def test_diagnose_and_the_run_report_list_the_suspicious_accounts(shop):
    from recsys.jobs.diagnose import DiagnoseConfig, diagnose
    from recsys.jobs.report import accounts_markdown

    attack = inject(shop, AttackConfig(shape="burst", share=0.05))
    report = diagnose(attack.data, DiagnoseConfig(compare_methods=False, clustering_sample=100))
    record = report.suspicious_accounts
    assert record["excluded_accounts"] >= len(attack.fake_users) and report.to_dict()["suspicious_accounts"]
    text = report.to_text()
    assert "suspicious accounts:" in text and str(attack.data.item_ids[attack.target]) in text
    assert "fake-burst-000000" in text or "fake-burst-00000" in text
    markdown = "\n".join(accounts_markdown(record))
    assert f"{record['excluded_lines']:,} purchase lines of {record['excluded_accounts']:,} accounts" in markdown
    assert "one-off buyers" in markdown or "burst" in markdown
    clean = diagnose(shop, DiagnoseConfig(compare_methods=False, clustering_sample=100))
    assert "suspicious accounts: none" in clean.to_text()
    assert "None: no account matched" in "\n".join(accounts_markdown(screen_accounts(shop).record(shop)))


def test_no_more_than_the_budget_is_left_out_on_suspicion(shop):
    attack = inject(shop, AttackConfig(shape="bandwagon", share=0.05))
    full = screen_accounts(attack.data)
    tight = screen_accounts(attack.data, AccountConfig(max_excluded_share=0.001, always_z=1e9))
    assert full.n_excluded_lines > 0.001 * attack.data.n_purchases
    assert tight.n_excluded_lines <= 0.001 * attack.data.n_purchases
    assert tight.not_acted_on and tight.record(attack.data)["not_acted_on"][0]["accounts"] > 0
    # an overwhelming pattern is acted on whatever the budget
    assert screen_accounts(attack.data, AccountConfig(max_excluded_share=0.0, always_z=0.0)).n_excluded_lines == \
        full.n_excluded_lines
    listed = screen_accounts(attack.data, AccountConfig(max_excluded_share=0.0,
                                                               exclude_users=(str(attack.data.user_ids[1]),)))
    assert listed.by_reason == {"listed in exclude_users": {"accounts": 1,
                                                            "lines": int((attack.data.purchase_user == 1).sum())}}


def test_evaluate_and_train_leave_injected_accounts_out_of_a_real_database(engine, cli, tmp_path):
    """Fake accounts loaded into Postgres: `recsys evaluate` says what it leaves out; nothing is deleted."""
    import pandas as pd
    import sqlalchemy as sa

    from recsys.ingest.load import load_frames
    from recsys.ingest.loaders.generic import read_frames

    shop = generate_shop(ShopConfig(seed=3, n_items=600, n_users=800, n_categories=10, n_baskets=5000,
                                    mean_basket_size=4.0))
    ds = shop.to_dataset()
    attack = inject(ds, AttackConfig(shape="bandwagon", share=0.05, seed=4))
    fake = np.flatnonzero(np.isin(attack.data.purchase_user, attack.fake_users))
    rows = pd.DataFrame({"user_id": attack.data.user_ids[attack.data.purchase_user[fake]],
                         "item_id": attack.data.item_ids[attack.data.purchase_item[fake]],
                         "purchased_at": pd.to_datetime(attack.data.purchase_time[fake], unit="s", utc=True),
                         "order_id": [f"fake-order-{o}" for o in attack.data.purchase_order[fake]]})
    items_csv, purchases_csv = shop.write_csv(tmp_path / "shop")
    pd.concat([pd.read_csv(purchases_csv), rows.astype(str)]).to_csv(tmp_path / "attacked.csv", index=False)
    load_frames(engine, read_frames(items_csv, tmp_path / "attacked.csv"))
    code, out = cli("evaluate", "--rows", "popularity,bought-together counts", "--max-queries", "300",
                    "--no-link-prediction")
    assert code == 0 and "Left out, as training leaves them out" in out and "accounts that look injected" in out
    with engine.connect() as conn:  # configuration, not deletion: the database keeps every line
        assert conn.execute(sa.text("SELECT count(*) FROM purchases WHERE user_id LIKE 'fake-%'")).scalar() == len(fake)
