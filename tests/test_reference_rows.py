"""The reference rows RP3beta, EASE and LightGCN (recsys/recommenders/classic.py, lightgcn.py)."""
import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from toy_data import make_dataset
from recsys.data.synthetic import ShopConfig, generate_shop
from recsys.evaluation.protocol import EvalConfig, evaluate, prepare
from recsys.jobs.pipeline import PipelineConfig
from recsys.recommenders.baselines import basket_item_matrix, purchase_counts
from recsys.recommenders.classic import (EASERecommender, RP3betaRecommender, ease_items_for_budget, ease_weights,
                                         keep_top_per_row)
from recsys.recommenders.lightgcn import LightGCNRecommender
from recsys.recommenders.lineup import NIGHTLY_ROWS, ROW_NAMES, build_rows


def small_lightgcn(**kw):
    return LightGCNRecommender(**{"dim": 16, "epochs": 20, "batch_size": 512, "lr": 0.05, "threads": 1, **kw})


ROWS = {"RP3beta": lambda: RP3betaRecommender(validation_queries=500),
        "EASE": lambda: EASERecommender(validation_queries=500),
        "LightGCN": small_lightgcn}


@pytest.fixture(scope="module")
def shop_split():
    ds = generate_shop(ShopConfig(seed=2, n_items=300, n_users=200, n_baskets=1500, n_categories=8,
                                  n_communities=6)).to_dataset()
    return ds, prepare(ds, EvalConfig(include_link_prediction=False))


@pytest.mark.parametrize("row", list(ROWS))
def test_row_fits_and_scores_finite_rows_of_the_right_shape(shop_split, row):
    ds, prep = shop_split
    rec = ROWS[row]()
    rec.fit(prep.split.train)
    warm = np.flatnonzero(prep.warm)[:7]
    cold = np.flatnonzero(prep.cold)[:5]
    assert len(cold) >= 2
    for scores, n in ((rec.score_warm(warm), len(warm)), (rec.score_cold(cold), len(cold))):
        assert scores.dtype == np.float32 and scores.shape == (n, ds.n_items)
        assert np.isfinite(scores).all()
    # the warm rows rank: not one constant per row
    assert (rec.score_warm(warm).std(axis=1) > 0).all()


@pytest.mark.parametrize("row", list(ROWS))
def test_cold_rows_depend_on_the_category_alone(shop_split, row):
    ds, prep = shop_split
    rec = ROWS[row]()
    rec.fit(prep.split.train)
    codes = ds.category.codes
    cold = np.flatnonzero(prep.cold | (purchase_counts(prep.split.train) == 0))
    by_category = {}
    for item in cold:
        by_category.setdefault(int(codes[item]), []).append(item)
    pairs = [items[:2] for items in by_category.values() if len(items) >= 2]
    assert pairs
    for a, b in pairs:
        rows = rec.score_cold(np.array([a, b]))
        assert np.array_equal(rows[0], rows[1])
    other = next(items[0] for code, items in by_category.items() if code != int(codes[pairs[0][0]]))
    assert not np.array_equal(rec.score_cold(np.array([pairs[0][0]]))[0], rec.score_cold(np.array([other]))[0])


def planted_shop():
    """'anchor' is always bought with 'partner'; 'stranger' is as popular but never with 'anchor'."""
    rng = np.random.default_rng(0)
    fillers = [f"f{i}" for i in range(30)]
    orders = []
    for t in range(120):
        basket = list(rng.choice(fillers, size=3, replace=False))
        if t % 3 == 0:
            basket += ["anchor", "partner"]
        elif t % 3 == 1:
            basket += ["stranger"]
        orders.append((t * 100, f"u{t % 40}", basket))
    categories = {i: "c" for i in fillers + ["anchor", "partner", "stranger"]}
    return make_dataset(orders, categories)


@pytest.mark.parametrize("row", list(ROWS))
def test_a_planted_co_purchase_ranks_above_a_random_item(row):
    ds = planted_shop()
    rec = ROWS[row]() if row != "LightGCN" else small_lightgcn(epochs=60)
    rec.fit(ds)
    idx = ds.item_index()
    scores = rec.score_warm(np.array([idx["anchor"]]))[0]
    assert scores[idx["partner"]] > scores[idx["stranger"]]
    fillers = [idx[f"f{i}"] for i in range(30)]
    assert scores[idx["partner"]] > np.median(scores[fillers])


def test_ease_equals_the_dense_closed_form():
    ds = planted_shop()
    lam = 7.0
    rec = EASERecommender(lambdas=(lam,))
    rec.fit(ds)
    x = basket_item_matrix(ds).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(ds.n_items))
    b = np.eye(ds.n_items) - p / np.diag(p)[None, :]
    assert np.allclose(np.diag(b), 0.0)
    assert rec.fit_stats["n_ease_items"] == ds.n_items  # every item is warm and fits the budget
    assert np.allclose(rec.score_warm(np.arange(ds.n_items)), b, atol=1e-5, rtol=1e-4)
    # the in-place path gives the same matrix
    g = (x.T @ x).astype(np.float32)
    assert np.allclose(ease_weights(g.copy(), lam, overwrite=True), ease_weights(g, lam), atol=1e-6)


def test_ease_outside_its_items_ranks_by_popularity_below_every_ease_score():
    ds = planted_shop()
    rec = EASERecommender(lambdas=(10.0,), max_items=5)
    rec.fit(ds)
    pop = purchase_counts(ds)
    inside = rec.model.columns
    assert len(inside) == 5 and set(inside) == set(np.argsort(-pop, kind="stable")[:5])
    outside = np.setdiff1d(np.arange(ds.n_items), inside)
    anchor = inside[0]
    row = rec.score_warm(np.array([anchor]))[0]
    assert row[outside].max() < row[inside].min()
    by_score = outside[np.argsort(-row[outside], kind="stable")]
    assert (np.diff(pop[by_score]) <= 0).all()
    # an anchor outside the EASE items ranks everything by popularity
    far = rec.score_warm(np.array([outside[0]]))[0]
    assert np.array_equal(np.argsort(-far, kind="stable"), np.argsort(-pop, kind="stable"))
    assert rec.fit_stats["matrix_mb"] == pytest.approx(5 * 5 * 4 / 2**20)


def test_ease_memory_budget_sets_n():
    assert ease_items_for_budget(2600) == 15072  # the default budget: about 15,000 items, 0.87 GB per matrix
    assert EASERecommender(memory_budget_mb=1).n_items_for(10_000) == ease_items_for_budget(1) < 10_000
    assert EASERecommender(max_items=50).n_items_for(10_000) == 50


def test_rp3beta_by_hand():
    # baskets {a, b}, {a, c}, {b, c}, {a, b}: P(a -> b) = sum over a's baskets of 1/deg(a) * 1/|basket| (b in it)
    ds = make_dataset([(0, "u", ["a", "b"]), (10_000, "u", ["a", "c"]), (20_000, "v", ["b", "c"]),
                       (30_000, "v", ["a", "b"])])
    rec = RP3betaRecommender(betas=(0.5,))
    rec.fit(ds)
    idx = ds.item_index()
    deg = {"a": 3, "b": 3, "c": 2}
    p_ab = (1 / 3) * (1 / 2) * 2  # two of a's three baskets hold b, each of size 2
    p_ac = (1 / 3) * (1 / 2)
    row = rec.score_warm(np.array([idx["a"]]))[0]
    assert row[idx["b"]] == pytest.approx(p_ab / deg["b"] ** 0.5)
    assert row[idx["c"]] == pytest.approx(p_ac / deg["c"] ** 0.5)
    assert row[idx["a"]] == 0.0


def test_keep_top_per_row():
    m = sp.csr_matrix(np.array([[0, 3, 1, 2], [5, 0, 0, 0], [1, 1, 1, 0]], dtype=np.float32))
    top = keep_top_per_row(m, 2).toarray()
    assert top.tolist() == [[0, 3, 0, 2], [5, 0, 0, 0], [1, 1, 0, 0]]


def test_validation_choices_never_read_the_test_period(shop_split):
    ds, prep = shop_split
    # the same shop with every test-period line moved to another item: training is unchanged
    rng = np.random.default_rng(1)
    moved = ds.purchase_item.copy()
    moved[prep.split.test_mask] = rng.integers(0, ds.n_items, int(prep.split.test_mask.sum()))
    other = dataclasses.replace(ds, purchase_item=moved.astype(ds.purchase_item.dtype))
    config = EvalConfig(include_link_prediction=False)
    stats = []
    for data in (ds, other):
        rp3, ease = RP3betaRecommender(validation_queries=500), EASERecommender(validation_queries=500)
        evaluate(data, [rp3, ease], config)
        stats.append((rp3.fit_stats, ease.fit_stats))
    (rp3_a, ease_a), (rp3_b, ease_b) = stats
    assert rp3_a["validation"] == rp3_b["validation"] and rp3_a["beta"] == rp3_b["beta"]
    assert ease_a["validation"] == ease_b["validation"] and ease_a["lambda"] == ease_b["lambda"]
    # the validation tail lies inside the training period, and the choice is its best recall
    for fit_stats, key in ((rp3_a, "beta"), (ease_a, "lambda")):
        validation = fit_stats["validation"]
        assert validation["validation_starts_at"] < prep.split.test_starts_at
        assert validation["n_validation_queries"] > 0
        recalls = validation["recall@20"]
        assert len(recalls) >= 3 and recalls[fit_stats[key]] == max(recalls.values())


def test_the_rows_are_in_the_lineup_but_not_nightly():
    for name in ("RP3beta", "EASE", "LightGCN"):
        assert name in ROW_NAMES and name not in NIGHTLY_ROWS
    recs = build_rows(["RP3beta", "EASE", "LightGCN"], PipelineConfig())
    assert [r.name for r in recs] == ["RP3beta", "EASE", "LightGCN"]


def test_lightgcn_on_the_basket_item_graph(shop_split):
    ds, prep = shop_split
    rec = small_lightgcn(unit="basket", epochs=5)
    rec.fit(prep.split.train)
    assert rec.fit_stats["unit"] == "basket"
    assert rec.fit_stats["n_rows"] == basket_item_matrix(prep.split.train).shape[0]
    assert len(rec.fit_stats["loss"]) == 5 and rec.fit_stats["loss"][-1] < rec.fit_stats["loss"][0]
    scores = rec.score_warm(np.flatnonzero(prep.warm)[:4])
    assert scores.shape == (4, ds.n_items) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="unit"):
        LightGCNRecommender(unit="session")
