"""The shipped ranking: co-purchase lists, the blend's fit, and the client serving what evaluation measured."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.blend import Blend, CoPurchases, merge_candidates, rank_outside_pool
from recsys.data.cooccurrence import DAY_S, basket_weights, copurchase_matrix, top_partners
from recsys.data.synthetic import ShopConfig, generate_shop
from recsys.embed.train import TrainConfig
from recsys.jobs.pipeline import PipelineConfig, build_parts, train_final
from recsys.recommenders.blended import BlendConfig, BlendedRecommender, fit_weights, pool_mask
from recsys.recommenders.compressed import CompressedRecommender
from recsys.recommenders.eges import EGESRecommender, ScorerConfig
from recsys.serving.bundle import open_bundle, write_bundle
from recsys.serving.client import Client
from recsys.serving.index import IndexConfig
from toy_data import make_dataset

SMALL_TRAIN = TrainConfig(dim=16, walks_per_node=4, epochs=2, num_threads=1)
SMALL_INDEX = IndexConfig(factory="SQ8", query_factory="SQ8", recall_queries=0)
SMALL_BLEND = BlendConfig(validation_queries=2000, simulated_cold_queries=500)


@st.composite
def sparse_matrices(draw):
    n_rows, n_cols = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    dense = np.array(draw(st.lists(st.lists(st.sampled_from([0.0, 0.0, 1.0, 2.0, 3.5]), min_size=n_cols,
                                            max_size=n_cols), min_size=n_rows, max_size=n_rows)))
    return sp.csr_matrix(dense), draw(st.integers(1, 5))


@settings(max_examples=60, deadline=None)
@given(sparse_matrices())
def test_top_partners_keep_the_heaviest_and_every_view_agrees(case):
    matrix, m = case
    lists = top_partners(matrix, m)
    dense = matrix.toarray()
    anchors = np.arange(matrix.shape[0])
    kept = lists.dense(anchors)
    for r in anchors:
        nonzero = np.flatnonzero(dense[r])
        want = nonzero[np.lexsort((nonzero, -dense[r, nonzero]))][:m]
        assert sorted(lists.partners(r).tolist()) == sorted(want.tolist())
        np.testing.assert_allclose(kept[r, want], np.log1p(dense[r, want]), rtol=1e-6)
    # lookup and padded lists say the same as the dense rows
    cands = np.tile(np.arange(matrix.shape[1]), (len(anchors), 1))
    np.testing.assert_allclose(lists.lookup(anchors, cands), kept)
    padded = lists.padded(anchors)
    for r in anchors:
        assert sorted(padded[r][padded[r] >= 0].tolist()) == sorted(lists.partners(r).tolist())
    # the client's merge of a pool with the lists: each candidate once, with the weight lookup gives it
    rng = np.random.default_rng(matrix.nnz)
    pool = rng.integers(-1, matrix.shape[1], (len(anchors), 4))
    partners, weight = lists.padded_with_weights(anchors)
    np.testing.assert_array_equal(partners, padded)
    candidates, copurchase = merge_candidates(pool, partners, weight)
    for r in anchors:
        got = candidates[r][candidates[r] >= 0]
        want = np.union1d(pool[r][pool[r] >= 0], padded[r][padded[r] >= 0])
        np.testing.assert_array_equal(got, want)  # ascending, once
    np.testing.assert_allclose(copurchase, lists.lookup(anchors, candidates))
    # renumbering partners (positions -> index rows, dropping some) keeps the weights of those kept
    new = np.where(np.arange(matrix.shape[1]) % 2 == 0, np.arange(matrix.shape[1]) // 2, -1)
    remapped = lists.remap(new, int((new >= 0).sum()))
    np.testing.assert_allclose(remapped.dense(anchors), kept[:, new >= 0])


def test_recent_baskets_weigh_more_with_a_half_life():
    # one two-item order a day, the same user
    ds = make_dataset([(day * DAY_S, "u", [f"i{day % 3}", f"i{(day + 1) % 3}"]) for day in range(6)])
    baskets = np.arange(ds.n_purchases) // 2
    w = basket_weights(ds, baskets, half_life_days=2.0)
    assert w[-1] == pytest.approx(1.0) and w[-3] == pytest.approx(0.5)  # two days older: half the weight
    assert np.all(np.diff(w) > 0)
    assert np.all(basket_weights(ds, baskets, None) == 1.0)
    plain = copurchase_matrix(ds, baskets=baskets)
    assert (plain != plain.T).nnz == 0 and plain.diagonal().sum() == 0


def test_the_conditional_logit_finds_the_feature_that_marks_targets():
    rng = np.random.default_rng(0)
    n_queries, pool = 400, 30
    groups = np.repeat(np.arange(n_queries), pool)
    signal, noise = rng.normal(size=len(groups)), rng.normal(size=len(groups))
    target = np.zeros(len(groups))
    for q in range(n_queries):  # the target is the pool member with the best signal + noise
        lo = q * pool
        target[lo + np.argmax(signal[lo:lo + pool] + 0.5 * rng.normal(size=pool))] = 1.0
    zeros = np.zeros_like(signal)
    w = fit_weights([signal, noise, zeros, zeros, zeros, zeros], groups, target, 1e-3, (0.0,) * 6)
    assert w[0] > 1.0 and abs(w[1]) < 0.3 * w[0]


def test_pools_rank_first_and_the_rest_by_embedding():
    emb = np.array([[3.0, 2.0, 1.0, 0.5, 0.1]], np.float32)
    partners = np.array([[0, 0, 0, 0, 2.0]], np.float32)
    in_pool = pool_mask(emb, 2, partners)
    assert in_pool.tolist() == [[True, True, False, False, True]]
    blended = Blend((0.0, 0.0, 1.0, 0.0, 0.0, 0.0)).score(emb, np.zeros_like(emb), partners, np.zeros_like(emb),
                                                     np.zeros((1, 1), np.float32))
    ranked = rank_outside_pool(blended, emb, in_pool)
    assert list(np.argsort(-ranked[0], kind="stable")) == [4, 0, 1, 2, 3]


@pytest.fixture(scope="module")
def shop():
    return generate_shop(ShopConfig(seed=3, n_items=500, n_users=400, n_baskets=5000, n_categories=12))


def test_the_blend_is_chosen_on_the_training_period_with_every_candidate_recorded(shop):
    from recsys.evaluation.split import split_chronological

    ds = shop.to_dataset()
    train = split_chronological(ds, 0.15).train
    eges = EGESRecommender(SMALL_TRAIN, ScorerConfig(validation_queries=500))
    rec = BlendedRecommender(CompressedRecommender(eges, SMALL_INDEX), SMALL_BLEND)
    with pytest.raises(ValueError, match="fit"):
        rec.score_warm(np.array([0]))
    rec.fit(train)
    choice = rec.choice
    assert len(choice["candidates"]) == (len(SMALL_BLEND.half_lives) * len(SMALL_BLEND.popularity_cuts)
                                         * len(SMALL_BLEND.embedding_scales) * len(SMALL_BLEND.interleaves))
    assert max(c["warm_recall@20"] for c in choice["candidates"]) > 0
    chosen = [c for c in choice["candidates"] if c["warm"] == choice["warm"]]
    assert len(chosen) == 1
    bar = choice["bought_together_coverage@20"] * (1 + SMALL_BLEND.coverage_margin)
    eligible = [c for c in choice["candidates"] if c["warm_coverage@20"] >= bar]
    if eligible:  # the best recall among the candidates whose coverage reaches bought-together counts'
        assert chosen[0]["warm_recall@20"] == max(c["warm_recall@20"] for c in eligible)
    else:  # else the widest lists
        assert chosen[0]["warm_coverage@20"] == max(c["warm_coverage@20"] for c in choice["candidates"])
    # the validation split lies inside the training period: the test period was never read
    assert eges.validation_fit[0].split.train.n_purchases < train.n_purchases
    scores = rec.score_warm(np.arange(5))
    assert scores.shape == (5, ds.n_items) and np.isfinite(scores).all()


@pytest.mark.parametrize("interleave,brand", [(0, False), (2, True)])
def test_the_client_serves_the_ranking_the_evaluation_measured(shop, tmp_path, interleave, brand):
    ds = shop.to_dataset()
    features = SMALL_BLEND.features + (("same_brand",) if brand else ())  # the shop's brands matter (synthetic)
    config = PipelineConfig(train=SMALL_TRAIN, scoring=ScorerConfig(validation_queries=500), index=SMALL_INDEX,
                            blend=dataclasses.replace(SMALL_BLEND, interleaves=(interleave,), features=features))
    shipped = train_final(ds, config, progress=False)
    assert shipped.warm_blend.interleave == interleave and shipped.choice["interleave"] == interleave
    assert (shipped.warm_blend.weights[6] != 0) == brand
    bundle = open_bundle(write_bundle(tmp_path, None, build_parts(shipped, ds, config, {})))
    assert bundle.manifest["format_version"] == 3 and bundle.parts.graph is not None
    assert bundle.manifest["graph"]["choice"]["candidates"]
    client = Client(bundle)
    shipped.base.fit(ds)  # the same index, for the dense ranking the evaluation scores with
    snap = client._snapshot
    warm = np.array([p for p in range(ds.n_items) if snap.index_row_list[p] >= 0][:60])
    dense = shipped.score_warm(warm)
    overlaps = []
    for row, pos in zip(dense, warm):
        row[pos] = -np.inf
        row[~shipped.candidates] = -np.inf
        want = {ds.item_ids[i] for i in np.argsort(-row, kind="stable")[:10]}
        got = {n.item_id for n in client.similar(ds.item_ids[pos], k=10)}
        overlaps.append(len(want & got) / 10)
    assert np.mean(overlaps) >= 0.95
    # batch == single, and a new item of a known category is answered from its category's co-purchases
    batch = client.similar_batch([ds.item_ids[p] for p in warm[:5]], k=10)
    assert [[n.item_id for n in r] for r in batch] == [[n.item_id for n in client.similar(ds.item_ids[p], k=10)]
                                                       for p in warm[:5]]
    category = ds.category.values[1]
    cold = client.similar_to_new_item(category=category, k=10)
    pos = next(p for p in range(ds.n_items) if ds.category.codes[p] == 1)
    dense_cold = shipped.score_cold(np.array([pos]))[0]
    dense_cold[~shipped.candidates] = -np.inf
    want = {ds.item_ids[i] for i in np.argsort(-dense_cold, kind="stable")[:10]}
    if all(c == 0 for c in snap.codes_list[pos][1:]):  # only the category known: the same query exactly
        assert len(want & {n.item_id for n in cold}) >= 9
    assert len(cold) == 10
    # filters still hold with the co-purchase candidates in the pool
    item = ds.item_ids[warm[0]]
    same = client.similar(item, k=10, same_category=True)
    assert same and all(n.category == snap.category_names[snap.position[item]] for n in same)
    assert same[0].item_id not in [n.item_id for n in client.similar(item, k=10, exclude=[same[0].item_id])]


def test_a_new_item_is_served_the_cold_blend_the_evaluation_measured_for_every_cold_candidate(shop, tmp_path):
    """The cold candidates beyond the fitted blend (the embedding alone, the category's baselines as blends)
    are served by the client as the evaluation scored them."""
    from recsys.recommenders.blended import COLD_BASELINES, START

    ds = shop.to_dataset()
    config = PipelineConfig(train=SMALL_TRAIN, scoring=ScorerConfig(validation_queries=500), index=SMALL_INDEX,
                            blend=dataclasses.replace(SMALL_BLEND, interleaves=(0,)))
    shipped = train_final(ds, config, progress=False)
    tried = shipped.choice["cold_candidates"]
    assert len(tried) == len(SMALL_BLEND.half_lives) and all(
        set(t["candidates"]) == {"embedding alone", "fitted", *COLD_BASELINES} and t["chosen"] in t["candidates"] for t in tried)
    shipped.base.fit(ds)
    # one item of each of the first categories, asked for as a new product with its own side features
    positions = [int(np.flatnonzero(ds.category.codes == c)[0]) for c in np.unique(ds.category.codes)[:8]]
    for name, weights in {"embedding alone": START, **COLD_BASELINES}.items():
        shipped.prepare(ds, {**shipped.choice, "cold": Blend(weights, SMALL_BLEND.pool).to_dict()})
        client = Client(open_bundle(write_bundle(tmp_path / name.replace(" ", "-"), None,
                                                 build_parts(shipped, ds, config, {}))))
        overlaps = []
        for pos in positions:
            dense = shipped.score_cold(np.array([pos]))[0]
            dense[~shipped.candidates] = -np.inf
            want = {ds.item_ids[i] for i in np.argsort(-dense, kind="stable")[:10]}
            brand = ds.brand.values[ds.brand.codes[pos]] if ds.brand.codes[pos] else None
            price = None if np.isnan(ds.price[pos]) else float(ds.price[pos])
            extras = {sf.name: sf.values[sf.codes[pos]] for sf in ds.extra_features if sf.codes[pos]}
            got = {n.item_id for n in client.similar_to_new_item(category=ds.category.values[ds.category.codes[pos]],
                                                                 brand=brand, price=price, k=10, **extras)}
            overlaps.append(len(want & got) / 10)
        assert overlaps and np.mean(overlaps) >= 0.95, (name, overlaps)


def test_a_cold_candidate_replaces_the_embedding_only_beyond_noise():
    from recsys.recommenders.blended import _choose_cold

    rng = np.random.default_rng(0)
    base = rng.random(400)
    recalls = {"embedding alone": base, "noisy": base + rng.normal(0, 0.2, 400) + 0.005,
               "better": base + 0.05 + rng.normal(0, 0.02, 400), "best": base + 0.08 + rng.normal(0, 0.02, 400)}

    class Pools:  # per-query recalls by candidate (PoolEntries.per_query's answer)
        def per_query(self, blend):
            return recalls[names[blend.weights]], 0.0

    blends = {name: Blend((1.0 - i / 10, 0.0, 0.0, 0.0, 0.0, 0.0)) for i, name in enumerate(recalls)}
    names = {b.weights: n for n, b in blends.items()}
    chosen, record = _choose_cold({n: blends[n] for n in ("embedding alone", "noisy")}, Pools(), 2.0)
    assert chosen == "embedding alone" and record["noisy"]["gain_over_embedding"] > 0  # a gain within noise
    assert _choose_cold(blends, Pools(), 2.0)[0] == "best"
    assert _choose_cold({n: blends[n] for n in ("embedding alone", "noisy", "better")}, Pools(), 2.0)[0] == "better"


def test_blend_variants_scale_the_embedding_and_cut_popularity_only():
    from recsys.recommenders.blended import _variant

    blend = Blend((0.8, 0.2, 0.5, 0.3, 0.05, 0.1, 0.7), pool=60)
    cut = _variant(blend, 0.5, 0.5, prior_beta=0.5)  # total popularity weight 0.4 * 0.5 + 0.2 = 0.4
    assert cut.weights == pytest.approx((0.4, 0.2 - 0.2, 0.5, 0.3, 0.05, 0.1, 0.7)) and cut.pool == 60
    assert Blend.from_dict(cut.to_dict()) == cut
    assert _variant(blend, 0.0, 1.0, 0.5, interleave=3).interleave == 3
    old = Blend.from_dict({"weights": {"embedding": 1.0}})  # a bundle from before interleaving and brands
    assert old.interleave == 0 and old.weights == (1.0,) + (0.0,) * 6
    assert Blend((0.5, 0.1)).weights == (0.5, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0)  # trailing features weigh 0
    with pytest.raises(ValueError, match="at most"):
        Blend((1.0,) * 8)
    with pytest.raises(ValueError, match="interleave"):
        Blend(interleave=1)


def test_interleaving_gives_every_nth_place_to_the_copurchase_order():
    from recsys.blend import served_columns

    # one query, six pool members: the blend prefers 0 > 1 > ... > 5; co-purchases prefer 5 > 4 > 3
    blended = np.array([[6.0, 5, 4, 3, 2, 1]], np.float32)
    co = np.array([[0.0, 0, 0, 1, 2, 3]], np.float32)
    valid = np.ones((1, 6), bool)
    order = lambda every, c=co, v=valid, take=6: list(served_columns(blended, c, v, every, take)[0])  # noqa: E731
    assert order(0) == [0, 1, 2, 3, 4, 5]
    assert order(2) == [0, 5, 1, 4, 2, 3]
    assert order(3) == [0, 1, 5, 2, 3, 4]  # 3 is the blend's 4th (place 4) before its co-purchase place (8)
    assert order(4) == [0, 1, 2, 5, 3, 4]
    assert order(2, take=3) == [0, 5, 1]
    # ties in co-purchase weight go in the blend's order; invalid entries are left out (-1 padded)
    co_tied = np.array([[0.0, 0, 0, 2, 2, 0]], np.float32)
    invalid_last = np.array([[True, True, True, True, True, False]])
    assert order(2, co_tied, invalid_last) == [0, 3, 1, 4, 2, -1]
    tied = np.array([[1.0, 1, 1, 1, 1, 1]], np.float32)  # blend ties to the lower column
    assert list(served_columns(tied, co, valid, 0, 6)[0]) == [0, 1, 2, 3, 4, 5]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([1, 2, 3, 5, 40]), st.integers(1, 30), st.sampled_from([0, 2, 3, 4]), st.integers(1, 35),
       st.integers(0, 2**31 - 1))
def test_the_validation_orders_pools_as_the_client_serves_them(q, m, every, take, seed):
    """The validation's numba ranking of a pool (blended.pool_order) equals the client's numpy one."""
    from recsys.blend import served_columns
    from recsys.recommenders.blended import pool_order

    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=(q, m)), 1).astype(np.float32)  # ties in the blend
    co = np.where(rng.random((q, m)) < 0.5, rng.integers(1, 4, (q, m)) * 0.5, 0.0).astype(np.float32)  # and in co
    valid = rng.random((q, m)) < 0.8
    got = served_columns(scores, co, valid, every, take)
    assert got.shape == (q, take)
    for r in range(q):
        idx = np.flatnonzero(valid[r])
        want = idx[pool_order(scores[r, idx], co[r, idx], every, take)]
        np.testing.assert_array_equal(got[r], np.r_[want, -np.ones(take - len(want), np.int64)])


@pytest.mark.parametrize("interleave", [0, 2, 3])
def test_the_validation_shortcut_measures_what_the_evaluator_measures(shop, interleave):
    # choosing among blends ranks only each query's pool (its top 20 lie there); the evaluator ranks everything
    from recsys.evaluation.metrics import score_queries
    from recsys.evaluation.protocol import EvalConfig, prepare
    from recsys.recommenders.blended import _Segment, pool_entries
    from recsys.vectors import log_popularity

    ds = shop.to_dataset()
    prep = prepare(ds, EvalConfig(max_queries=400, include_link_prediction=False))
    train = prep.split.train
    lists = top_partners(copurchase_matrix(train), 30)
    log_pop = log_popularity(train.purchase_item, train.n_items)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(ds.n_items, 8)).astype(np.float32)
    embed = lambda a: vectors[a] @ vectors.T  # noqa: E731
    blend = Blend((1.0, 0.3, 0.8, 0.2, 0.05, -0.1, 0.15), pool=25, interleave=interleave)
    segment = _Segment(embed, lists, lambda a: a, log_pop, train.category.codes.astype(np.int64), log_pop,
                       prep.warm, blend, 1, brand=train.brand.codes.astype(np.int64))
    recall, coverage = pool_entries([segment], prep.warm_queries, True)[0].measure(blend)
    full = score_queries(segment.scores, prep.warm_queries, prep.columns, ds.n_items, (20,), mask_anchor=True)
    assert recall == pytest.approx(full.recall[20], abs=1e-9)
    assert coverage == pytest.approx(full.coverage[20], abs=1e-9)


def _dense_pool_entries(segment, queries, mask_anchor):
    """The pool pass as it was written first, over dense (queries x items) arrays: the reference."""
    from recsys.blend import FEATURES
    from recsys.recommenders.blended import PoolEntries

    feats = [[] for _ in FEATURES]
    groups, items, target_of = [], [], []
    for lo in range(0, queries.n_queries, 7):
        hi = min(lo + 7, queries.n_queries)
        anchors = queries.anchors[lo:hi]
        emb, co, same, support, in_pool, brand = segment.features(anchors)
        if mask_anchor:
            in_pool[np.arange(hi - lo), anchors] = False
        target = np.zeros_like(in_pool)
        t_rows = np.repeat(np.arange(hi - lo), np.diff(queries.indptr[lo:hi + 1]))
        target[t_rows, queries.targets[queries.indptr[lo]:queries.indptr[hi]]] = True
        q_idx, b_idx = np.nonzero(in_pool)
        c = co[q_idx, b_idx]
        pop = segment.log_pop[b_idx]
        for j, values in enumerate((emb[q_idx, b_idx], pop, c, same[q_idx, b_idx], c * support[q_idx, 0],
                                    pop * (c > 0), brand[q_idx, b_idx])):
            feats[j].append(values.astype(np.float64))
        groups.append(q_idx + lo)
        items.append(b_idx)
        target_of.append(target[q_idx, b_idx])
    return PoolEntries(np.stack([np.concatenate(f) for f in feats], axis=1), np.concatenate(groups),
                       np.concatenate(items), np.concatenate(target_of), np.diff(queries.indptr).astype(np.int64),
                       int(segment.candidates.sum()))


@pytest.mark.parametrize("cold", [False, True])
def test_the_pool_pass_looks_up_members_and_equals_the_dense_pass(cold):
    """pool_entries scores densely only to pick the embedding's best; the members' features are looked up.
    Entry for entry it equals the dense pass (ties in the embedding scores included)."""
    from recsys.blend import Blend, CoPurchases
    from recsys.evaluation.queries import QuerySet
    from recsys.recommenders.blended import _Segment, pool_entries

    rng = np.random.default_rng(4)
    n, n_anchors, q = 300, (12 if cold else 300), 40
    scores = np.round(rng.normal(size=(n_anchors, n)), 1).astype(np.float32)  # rounded: many ties

    def lists(width):
        indptr = np.r_[0, np.cumsum(rng.integers(0, width, n_anchors))]
        items = np.concatenate([np.sort(rng.choice(n, indptr[i + 1] - indptr[i], replace=False))
                                for i in range(n_anchors)]).astype(np.int32)
        weight = np.where(rng.random(len(items)) < 0.1, 0.0, rng.gamma(1.0, 1.0, len(items))).astype(np.float32)
        return CoPurchases(indptr, items, weight, n)

    category = rng.integers(0, 12, n)
    candidates = rng.random(n) < 0.8
    anchors = rng.integers(0, n, q)
    lengths = rng.integers(1, 5, q)
    queries = QuerySet(anchors.astype(np.int64), np.r_[0, np.cumsum(lengths)].astype(np.int64),
                       rng.integers(0, n, lengths.sum()).astype(np.int64), q)
    anchor_of = (lambda a: category[a]) if cold else (lambda a: a)
    # two segments over one embedding (two half-lives' lists): one pass, each its own dense pass
    segments = [_Segment(lambda a: scores[anchor_of(a)], lists(30), anchor_of,
                         rng.random(n_anchors).astype(np.float32), category, rng.random(n).astype(np.float32),
                         candidates, Blend(pool=25), 0 if cold else 1, lists(20) if cold else None,
                         brand=rng.integers(0, 4, n))
                for _ in range(2)]
    segments[1].embed_fn = segments[0].embed_fn
    segments[1].log_pop = segments[0].log_pop
    both = pool_entries(segments, queries, not cold)
    for segment, got in zip(segments, both):
        want = _dense_pool_entries(segment, queries, not cold)
        np.testing.assert_array_equal(got.groups, want.groups)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.target, want.target)
        np.testing.assert_array_equal(got.features, want.features)
    assert not np.array_equal(both[0].items, both[1].items)  # the lists made them differ
    with pytest.raises(ValueError, match="share"):
        pool_entries([segments[0], _Segment(lambda a: scores[anchor_of(a)], *[getattr(segments[0], f) for f in (
            "lists", "anchor_of", "support", "category", "log_pop", "candidates", "blend", "extra_pool")])],
            queries, not cold)
    got = both[0]
    assert got.target.sum() > 0 and len(got.groups) > q * 25


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 45), st.integers(0, 10_000))
def test_top_columns_are_a_stable_sorts_first_allowed_columns(n, take, seed):
    """The pool's best columns: score descending, ties to the lower column, only allowed columns."""
    from recsys.evaluation.ranking import top_columns

    rng = np.random.default_rng(seed)
    scores = rng.integers(-3, 3, (4, n)).astype(np.float32)  # small integers: many ties
    allowed = rng.random(n) < 0.7
    got = top_columns(scores, allowed, take)
    for r in range(4):
        order = [j for j in np.argsort(-scores[r], kind="stable") if allowed[j]][:take]
        assert got[r].tolist() == order + [-1] * (take - len(order))
