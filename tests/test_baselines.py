import numpy as np
import pytest
import scipy.sparse as sp

from toy_data import make_dataset
from recsys.recommenders.baselines import (BoughtTogetherRecommender, CategoryPopularityRecommender, ItemCFRecommender,
                              MatrixFactorizationRecommender, PopularityRecommender, basket_item_matrix,
                              cooccurrence_counts, implicit_als)
from recsys.evaluation.protocol import EvalConfig, evaluate


CATEGORIES = {"milk": "dairy", "cheese": "dairy", "yogurt": "dairy", "bread": "bakery", "bun": "bakery",
              "soap": "home", "new_dairy": "dairy", "new_home": "home"}


def shop():
    orders = [(t, f"u{t % 4}", ["milk", "bread"]) for t in range(6)]
    orders += [(10 + t, f"u{t % 4}", ["cheese", "bun"]) for t in range(3)]
    orders += [(20 + t, f"u{t % 4}", ["milk", "soap"]) for t in range(2)]
    orders += [(30, "u1", ["yogurt", "milk"]), (31, "u2", ["milk"]), (32, "u3", ["milk"])]
    return make_dataset(orders, CATEGORIES)


def ranking(rec, ds, anchor, cold=False):
    idx = ds.item_index()
    scores = (rec.score_cold if cold else rec.score_warm)(np.array([idx[anchor]]))[0]
    assert scores.dtype == np.float32 and scores.shape == (ds.n_items,)
    order = np.lexsort((-np.arange(ds.n_items), -scores))  # best first; tie order irrelevant here
    return [ds.item_ids[i] for i in order if ds.item_ids[i] != anchor]


ALL = [PopularityRecommender, CategoryPopularityRecommender, ItemCFRecommender, BoughtTogetherRecommender,
       lambda: MatrixFactorizationRecommender(dim=8, iterations=5)]


def test_popularity_ranks_by_purchase_count():
    ds = shop()
    rec = PopularityRecommender()
    rec.fit(ds)
    assert ranking(rec, ds, "soap")[:2] == ["milk", "bread"]


def test_category_popularity_respects_category():
    ds = shop()
    rec = CategoryPopularityRecommender()
    rec.fit(ds)
    assert ranking(rec, ds, "bun")[0] == "bread"  # same category beats the globally popular milk
    assert ranking(rec, ds, "new_dairy", cold=True)[:3] == ["milk", "cheese", "yogurt"]


def test_bought_together_returns_the_co_bought_item_first():
    ds = shop()
    rec = BoughtTogetherRecommender()
    rec.fit(ds)
    assert ranking(rec, ds, "cheese")[0] == "bun"
    assert ranking(rec, ds, "milk")[:2] == ["bread", "soap"]
    # cold dairy item: summed counts of dairy items' baskets: bread 6 (milk), bun 3 (cheese), soap 2
    idx = ds.item_index()
    cold = rec.score_cold(np.array([idx["new_dairy"]]))[0]
    assert cold[idx["bread"]] == 6 and cold[idx["bun"]] == 3 and cold[idx["soap"]] == 2


def test_item_cf_is_cosine_of_basket_columns():
    ds = shop()
    rec = ItemCFRecommender()
    rec.fit(ds)
    idx = ds.item_index()
    s = rec.score_warm(np.array([idx["milk"]]))[0]
    # milk in 11 baskets, bread in 6, both in 6: cos = 6 / sqrt(11 * 6)
    assert s[idx["bread"]] == pytest.approx(6 / np.sqrt(11 * 6), rel=1e-5)
    assert s[idx["milk"]] == 0.0
    assert ranking(rec, ds, "cheese")[0] == "bun"


def test_cooccurrence_counts_baskets_not_lines():
    ds = make_dataset([(0, "u", ["a", "a", "b"]), (1, "v", ["a", "b"])])
    c = cooccurrence_counts(basket_item_matrix(ds)).toarray()
    assert c.tolist() == [[0, 2], [2, 0]]


@pytest.mark.parametrize("make", ALL)
def test_cold_scores_use_side_features_only(make):
    """Two items with the same side features get identical cold scores, purchases or not."""
    ds = shop()
    rec = make()
    rec.fit(ds)
    idx = ds.item_index()
    pair = rec.score_cold(np.array([idx["yogurt"], idx["new_dairy"]]))  # yogurt was bought, new_dairy not
    assert np.array_equal(pair[0], pair[1])
    assert np.isfinite(pair).all()


@pytest.mark.parametrize("make", ALL)
def test_scoring_before_fit_is_a_clear_error(make):
    with pytest.raises(ValueError, match="fit"):
        make().score_warm(np.array([0]))


def test_implicit_als_separates_blocks():
    # two groups of users buying two disjoint groups of items
    rows, cols = [], []
    for u in range(40):
        block = u % 2
        for i in range(5):
            rows.append(u)
            cols.append(block * 5 + i)
    r = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(40, 10))
    _, y = implicit_als(r, dim=4, iterations=10, seed=1)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    sim = y @ y.T
    within = sim[:5, :5][~np.eye(5, dtype=bool)].min()
    across = sim[:5, 5:].max()
    assert within > across + 0.5


def test_matrix_factorisation_rejects_bad_options():
    with pytest.raises(ValueError, match="unit"):
        MatrixFactorizationRecommender(unit="session")
    with pytest.raises(ValueError, match="similarity"):
        MatrixFactorizationRecommender(similarity="euclid")


def test_baselines_on_a_synthetic_shop_beat_chance():
    from recsys.data.synthetic import ShopConfig, generate_shop

    ds = generate_shop(ShopConfig(seed=0, n_items=400, n_users=300, n_baskets=3000)).to_dataset()
    recs = [make() for make in ALL]
    report = evaluate(ds, recs, EvalConfig(include_link_prediction=False))
    n_warm = report.summary["n_warm_items"]
    for row in report.rows:
        assert row.warm.n_queries > 0 and row.cold.n_queries > 0
        assert row.warm.recall[20] > 2 * 20 / n_warm, row.name  # well above a random list
    together = report.row("bought-together counts").warm.recall[20]
    assert together > report.row("popularity").warm.recall[20]


def test_als_half_step_matches_the_dense_normal_equations():
    """Enough CG steps solve (Y'Y + reg I + Y' diag(c_u - 1) Y) x_u = Y' c_u p_u for every row."""
    import scipy.sparse as sp

    from recsys.recommenders.baselines import _cg_half_step

    rng = np.random.default_rng(0)
    r = sp.random(30, 12, density=0.3, random_state=1, format="csr", dtype=np.float32)
    r.data = np.log1p(rng.integers(1, 5, r.nnz)).astype(np.float32)
    y = rng.standard_normal((12, 4)).astype(np.float32)
    x0 = np.zeros((30, 4), np.float32)
    got = _cg_half_step(r, x0, y, reg=0.1, alpha=10.0, steps=8)
    for u in range(30):
        cols, vals = r.indices[r.indptr[u]:r.indptr[u + 1]], r.data[r.indptr[u]:r.indptr[u + 1]]
        c = 1.0 + 10.0 * vals
        a = y.T @ y + 0.1 * np.eye(4) + (y[cols].T * (c - 1)) @ y[cols]
        b = y[cols].T @ c
        np.testing.assert_allclose(got[u], np.linalg.solve(a, b), rtol=2e-3, atol=2e-3)
