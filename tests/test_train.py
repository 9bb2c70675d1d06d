import dataclasses
import json

import numpy as np
import pytest
import torch

from recsys.data.graph import build_item_graph
from recsys.embed.model import EGES, item_features
from recsys.data.sessions import make_baskets
from recsys.data.synthetic import ShopConfig, generate_shop
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.embed import sgns_cpu
from recsys.embed.train import (TrainConfig, component_rows, sgns_gradients, skipgram_pairs, train_embeddings,
                                window_masks)
from recsys.recommenders.eges import EGESRecommender, ScorerConfig
from recsys.vectors import Scorer

# one thread: the CPU kernel's Hogwild threads make runs with more than one thread differ in the last bits
FAST = TrainConfig(dim=16, walks_per_node=3, walk_length=8, window=3, batch_size=4096, epochs=1, device="cpu",
                   num_threads=1)
FAST_SCORING = ScorerConfig(validation_queries=300)


@pytest.fixture(scope="module")
def shop():
    return generate_shop(ShopConfig(seed=0, n_items=600, n_users=400, n_baskets=4000, n_communities=8,
                                    n_categories=16))


@pytest.fixture(scope="module")
def shop_data(shop):
    ds = shop.to_dataset()
    return ds, build_item_graph(ds, make_baskets(ds))


@pytest.fixture(scope="module")
def trained(shop_data):
    ds, graph = shop_data
    return train_embeddings(ds, graph, FAST, progress=False)


# --------------------------------------------------------------------------- pairs
def test_skipgram_pairs_count_and_skip_padding():
    walks = np.array([[0, 1, 2, 3], [4, 5, -1, -1]])
    centers, contexts = skipgram_pairs(walks, window=2)
    flat = walks.ravel()
    pairs = set(zip(flat[centers].tolist(), flat[contexts].tolist()))
    assert len(centers) == 2 * (3 + 2) + 2  # full walk: offsets 1 and 2 both ways; short walk: one edge
    assert (4, 5) in pairs and (5, 4) in pairs and (0, 2) in pairs and (0, 3) not in pairs
    assert np.all(flat[centers] >= 0) and np.all(flat[contexts] >= 0)


def test_window_masks_give_the_same_pairs_as_skipgram_pairs():
    rng_walks = np.random.default_rng(3)
    walks = rng_walks.integers(0, 9, size=(6, 7))
    walks[2, 4:] = -1
    centers, contexts = skipgram_pairs(walks, 3, np.random.default_rng(1))
    masks = window_masks(walks, 3, np.random.default_rng(1))
    flat = np.arange(walks.size).reshape(walks.shape)
    c2, t2 = [], []
    for o, (fwd, bwd) in enumerate(masks, start=1):
        c2 += [flat[:, :-o][fwd], flat[:, o:][bwd]]
        t2 += [flat[:, o:][fwd], flat[:, :-o][bwd]]
    assert np.array_equal(np.concatenate(c2), centers) and np.array_equal(np.concatenate(t2), contexts)


# --------------------------------------------------------------------------- gradients
def random_model(ds, mode: str):
    """(float64 EGES with random tables and attention, the item features): gradients are easy to compare."""
    torch.manual_seed(0)
    feats = item_features(ds)
    model = EGES(torch.from_numpy(feats.codes), feats.cardinalities, dim=8, mode=mode).double()
    with torch.no_grad():
        for p in [*model.tables(), model.context_embedding.weight]:
            p.normal_(0, 0.3)
        for t in model.tables()[1:]:
            t[0].zero_()
        if mode == "eges":
            model.attention_logits.normal_()
    return model, feats


@pytest.mark.parametrize("mode", ["bge", "ges", "eges"])
def test_hand_written_gradients_match_autograd(shop_data, mode):
    ds, _ = shop_data
    model, feats = random_model(ds, mode)
    walks = np.random.default_rng(0).integers(0, ds.n_items, size=(5, 6))
    walks[1, 3:] = -1
    masks_np = window_masks(walks, 2, np.random.default_rng(2))
    negatives = torch.from_numpy(np.random.default_rng(4).integers(0, ds.n_items, size=(40, 3)))
    drop = torch.from_numpy(np.random.default_rng(5).random(walks.size) < 0.3) if mode != "bge" else None
    masks = [(torch.from_numpy(f), torch.from_numpy(b)) for f, b in masks_np]
    grads = sgns_gradients(model, torch.from_numpy(walks), masks, lambda n: negatives[:n], drop)

    # Reference: autograd through the module on explicitly listed pairs.
    params = [*model.tables(), model.context_embedding.weight, model.attention_logits]
    for p in params:
        p.requires_grad_(True)
    centers, contexts = skipgram_pairs(walks, 2, np.random.default_rng(2))
    flat = torch.from_numpy(walks.ravel())
    h_all = model(flat.clamp(min=0), drop)
    per_center = torch.bincount(torch.from_numpy(centers), minlength=walks.size)
    owners = per_center.nonzero().squeeze(1)
    ctx = model.context_embedding.weight
    loss = EGES.sgns_loss(h_all[centers], ctx[flat[contexts]], h_all[owners], ctx[negatives[:len(owners)]],
                          per_center[owners].double())
    loss.backward()
    assert grads.loss == pytest.approx(loss.item(), rel=1e-9)
    assert grads.n_pairs == len(centers)

    def dense(rows, values, like):
        out = torch.zeros_like(like)
        out.index_add_(0, rows, values.reshape(len(rows), -1))
        return out

    for (rows, values), table in zip(grads.tables, model.tables()):
        assert torch.allclose(dense(rows, values, table), table.grad, atol=1e-10)
    assert torch.allclose(dense(*grads.context, ctx), ctx.grad, atol=1e-10)
    if mode == "eges":
        mine = dense(*grads.attention, model.attention_logits)
        bad = (mine - model.attention_logits.grad).abs().sum(1).nonzero().squeeze(1)
        assert torch.allclose(mine, model.attention_logits.grad, atol=1e-10), (bad, mine[bad], model.attention_logits.grad[bad])


# --------------------------------------------------------------------------- the CPU kernel
@pytest.mark.parametrize("mode,drop", [("eges", False), ("eges", True), ("ges", False), ("bge", False)])
def test_cpu_kernel_center_update_is_one_adagrad_step_on_the_centers_loss(shop_data, mode, drop):
    """With distinct rows, one center's update = one row-wise Adagrad step on its SGNS loss (autograd)."""
    ds, _ = shop_data
    model, feats = random_model(ds, mode)
    v = int(np.flatnonzero((feats.codes > 0).all(1))[0])  # an item with every side feature
    contexts = np.array([v + 1, v + 2, v + 3], np.int64)
    noise = np.array([v + 4, v + 5], np.int64)
    drop_t = torch.tensor([drop])

    # reference: autograd through the module, then one Adagrad step from a zero state
    params = [*model.tables(), model.context_embedding.weight, model.attention_logits]
    for p in params:
        p.requires_grad_(True)
    h = model(torch.tensor([v]), drop_t if drop else None)
    ctx = model.context_embedding.weight
    loss = EGES.sgns_loss(h.expand(3, -1), ctx[torch.from_numpy(contexts)], h,
                          ctx[torch.from_numpy(noise)].unsqueeze(0), torch.tensor([3.0], dtype=torch.float64))
    loss.backward()
    lr, att_lr, eps = 0.05, 0.01, 1e-10

    def adagrad(param, rate):
        g = param.grad.detach()
        ms = (g * g).mean(1, keepdim=True)
        return (param.detach() - rate * g / (ms.sqrt() + eps)).where(ms > 0, param.detach())

    expected_tables = [adagrad(t, lr) for t in model.tables()]
    expected_ctx = adagrad(ctx, lr)
    expected_logits = adagrad(model.attention_logits, att_lr) if mode == "eges" else model.attention_logits.detach()

    # the kernel on float32 copies of the same tables
    offsets, comp_rows = component_rows(model)
    emb = np.concatenate([t.detach().numpy() for t in model.tables()]).astype(np.float32)
    ctx_np = ctx.detach().numpy().astype(np.float32)
    logits = model.attention_logits.detach().numpy().astype(np.float32)
    states = [np.zeros(len(a), np.float32) for a in (emb, ctx_np, logits)]
    scratch = [np.empty(8, np.float32) for _ in range(3)] + [np.empty(comp_rows.shape[1]) for _ in range(2)]
    got_loss = sgns_cpu.center_update(v, contexts, 3, noise, 2, drop, comp_rows, emb, states[0], ctx_np, states[1],
                                      logits, states[2], mode == "eges", lr, att_lr, eps, *scratch)
    assert got_loss == pytest.approx(loss.item(), rel=1e-5)
    for table, start, want in zip(model.tables(), offsets, expected_tables):
        assert np.allclose(emb[start:start + table.shape[0]], want.numpy(), atol=2e-5)
    assert np.allclose(ctx_np, expected_ctx.numpy(), atol=2e-5)
    assert np.allclose(logits, expected_logits.numpy(), atol=2e-5)
    if drop or mode != "eges":
        assert np.array_equal(logits, model.attention_logits.detach().numpy().astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=40).filter(lambda c: sum(c) > 0),
       st.floats(0.0, 1.0))
def test_noise_table_holds_only_counted_items_in_proportion(counts, power):
    counts = np.asarray(counts, dtype=np.float64)
    table = sgns_cpu.noise_table(counts, power)
    share = np.bincount(table, minlength=len(counts)) / len(table)
    probs = np.where(counts > 0, counts ** power, 0.0)
    probs /= probs.sum()
    assert np.all(share[counts == 0] == 0)
    assert np.allclose(share, probs, atol=2.0 / len(table))


def test_engines_reach_the_same_loss_and_threads_are_reported(shop_data):
    ds, graph = shop_data
    config = dataclasses.replace(FAST, walks_per_node=6, epochs=2)
    by_engine = {e: train_embeddings(ds, graph, dataclasses.replace(config, engine=e), progress=False)
                 for e in ("numba", "torch")}
    final = {e: t.loss_history[-5:].mean() for e, t in by_engine.items()}
    assert final["numba"] == pytest.approx(final["torch"], rel=0.1), final
    assert by_engine["numba"].stats["engine"] == "numba" and by_engine["numba"].stats["threads"] == 1
    assert by_engine["numba"].stats["pairs"] > 0
    two = train_embeddings(ds, graph, dataclasses.replace(config, num_threads=2), progress=False)
    assert two.stats["threads"] == min(2, sgns_cpu.nb.config.NUMBA_NUM_THREADS)
    assert np.isfinite(two.item_vectors).all()


# --------------------------------------------------------------------------- training
def tiny_shop_dataset():
    shop = generate_shop(ShopConfig(seed=1, n_items=200, n_users=50, n_baskets=300, n_communities=4, n_categories=8))
    return shop.to_dataset()


def test_loss_goes_down_on_a_toy_graph():
    # two cliques of 6 items joined by one edge: easy structure to learn
    from recsys.data.graph import ItemGraph

    src, dst = zip(*[(i, j) for block in (range(6), range(6, 12)) for i in block for j in block if i < j], (5, 6))
    graph = ItemGraph.from_edges(12, src, dst)
    ds = tiny_shop_dataset()
    ds = dataclasses.replace(ds, item_ids=ds.item_ids[:12], price=ds.price[:12], in_stock=ds.in_stock[:12],
                             item_created_at=ds.item_created_at[:12],
                             category=dataclasses.replace(ds.category, codes=ds.category.codes[:12]),
                             brand=dataclasses.replace(ds.brand, codes=ds.brand.codes[:12]),
                             extra_features=[], purchase_item=np.zeros(0, np.int32),
                             purchase_user=np.zeros(0, np.int32), purchase_time=np.zeros(0, np.int64),
                             purchase_order=np.zeros(0, np.int64), purchase_quantity=np.zeros(0, np.int32))
    config = dataclasses.replace(FAST, walks_per_node=30, batch_size=512, epochs=2, lr=0.05)
    trained = train_embeddings(ds, graph, config, progress=False)
    hist = trained.loss_history
    assert len(hist) > 10
    # the context table starts at zero: every score is 0 and each pair costs (1 + K) log 2 at first
    start = (1 + config.negatives) * np.log(2)
    assert hist[-5:].mean() < 0.6 * start
    sim = trained.item_vectors @ trained.context_vectors.T
    within = np.mean([sim[i, j] for i in range(6) for j in range(6) if i != j])
    across = np.mean([sim[i, j] for i in range(6) for j in range(7, 12)])
    assert within > across


def test_same_seed_same_vectors(shop_data, trained):
    ds, graph = shop_data
    a = trained
    b = train_embeddings(ds, graph, FAST, progress=False)
    c = train_embeddings(ds, graph, dataclasses.replace(FAST, seed=1), progress=False)
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert np.array_equal(a.context_vectors, b.context_vectors)
    assert np.array_equal(a.loss_history, b.loss_history)
    assert not np.array_equal(a.item_vectors, c.item_vectors)


def test_trained_model_is_numpy_only_and_consistent(shop_data, trained):
    ds, graph = shop_data
    t = trained
    assert t.item_vectors.shape == (ds.n_items, FAST.dim) and t.item_vectors.dtype == np.float32
    assert t.feature_names == ["category", "brand", "price_tier", "color"]
    assert t.attention_logits.shape == (ds.n_items, 5)
    w = t.attention_weights()
    assert np.allclose(w.sum(1), 1, atol=1e-5) and np.all(w >= 0)
    assert all(isinstance(v, np.ndarray) for v in t.to_arrays().values())
    json.dumps(t.config)  # the config travels as JSON, not pickle
    assert t.stats["pairs"] > 0 and t.stats["pairs_per_s"] > 0
    # the cold-start formula by hand: mean of the present side-feature rows
    cat, brand, price = ds.category.codes[:3], ds.brand.codes[:3], ds.price[:3]
    color = ds.extra_features[0].codes[:3]
    cold = t.cold_start_vectors(cat, brand, price, {"color": color})
    codes = t.item_feature_codes[:3]
    by_hand = np.mean([t.side_tables[n][codes[:, j]] for j, n in enumerate(t.feature_names)], axis=0)
    assert np.allclose(cold, by_hand, atol=1e-6)
    with pytest.raises(ValueError, match="category codes"):
        t.cold_start_vectors(np.array([10_000]))


def community_purity(vectors, community, items, k=10):
    v = vectors[items] / np.linalg.norm(vectors[items], axis=1, keepdims=True)
    sim = v @ v.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    return float((community[items][nn] == community[items][:, None]).mean())


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_vectors_cluster_by_planted_community_and_cold_items_land_in_their_category(shop, shop_data, engine):
    ds, graph = shop_data
    t = train_embeddings(ds, graph, dataclasses.replace(FAST, walks_per_node=10, engine=engine), progress=False)
    community = shop.item_community
    warm = np.flatnonzero(graph.degree() >= 3)
    chance = np.mean([(community[warm] == c).mean() ** 2 for c in np.unique(community[warm])]) * len(np.unique(community[warm]))
    purity = community_purity(t.item_vectors, community, warm)
    assert purity > 3 * chance, (purity, chance)

    new = ds.item_index()
    new_items = np.array([new[i] for i in shop.new_item_ids])
    codes = t.item_feature_codes[new_items]
    cold = t.cold_vectors_from_codes(codes)
    hv = t.item_vectors[warm] / np.linalg.norm(t.item_vectors[warm], axis=1, keepdims=True)
    sims = cold @ hv.T
    top = warm[np.argsort(-sims, axis=1)[:, :10]]
    same_cat = (ds.category.codes[top] == ds.category.codes[new_items][:, None]).mean()
    base_rate = np.mean([(ds.category.codes[warm] == ds.category.codes[i]).mean() for i in new_items])
    assert same_cat > 3 * base_rate, (same_cat, base_rate)


def test_ridge_cold_start_fits_warm_vectors_better_than_the_plain_mean(shop_data):
    ds, graph = shop_data
    t = train_embeddings(ds, graph, dataclasses.replace(FAST, cold_start="ridge", walks_per_node=2), progress=False)
    assert t.cold_map is not None
    warm = np.flatnonzero(t.item_counts > 0)
    codes = t.item_feature_codes[warm]

    def mse(a, b):
        return float(np.mean((a - b) ** 2))

    ridge = t.cold_vectors_from_codes(codes)
    t.config["cold_start"] = "side_mean"
    plain = t.cold_vectors_from_codes(codes)
    assert np.all(np.isfinite(ridge))
    assert mse(ridge, t.item_vectors[warm]) < mse(plain, t.item_vectors[warm])


def test_config_rejects_bad_values():
    for bad in [dict(mode="x"), dict(engine="x"), dict(cold_start="x"), dict(dim=0), dict(walk_length=1),
                dict(id_dropout=1.0), dict(lr=0)]:
        with pytest.raises(ValueError, match="TrainConfig"):
            dataclasses.replace(FAST, **bad).validate()
    for bad in [dict(warm="x"), dict(cold="x"), dict(validation_fraction=1.0)]:
        with pytest.raises(ValueError, match="ScorerConfig"):
            dataclasses.replace(FAST_SCORING, **bad).validate()


# --------------------------------------------------------------------------- recommender
def test_scorer_is_inner_product_with_a_popularity_column(shop_data, trained):
    ds, graph = shop_data
    t = trained
    log_pop = np.log1p(np.arange(ds.n_items, dtype=np.float32))
    s = Scorer("inout_prior", beta=0.5)
    scores = s.query_matrix(t.item_vectors[:2]) @ s.item_matrix(t.item_vectors, t.context_vectors, log_pop).T
    assert np.allclose(scores, t.item_vectors[:2] @ t.context_vectors.T + 0.5 * log_pop, atol=1e-5)


@pytest.mark.parametrize("mode", ["bge", "eges"])
def test_recommender_fits_and_scores(shop, mode):
    from recsys.evaluation.split import split_chronological

    ds = shop.to_dataset()
    split = split_chronological(ds, 0.15)
    rec = EGESRecommender(FAST, FAST_SCORING, mode=mode)
    assert rec.name == mode.upper()
    with pytest.raises(ValueError, match="fit"):
        rec.score_warm(np.array([0]))
    rec.fit(split.train)
    warm = np.flatnonzero(np.bincount(split.train.purchase_item, minlength=ds.n_items) > 0)[:7]
    cold = np.flatnonzero(np.bincount(split.train.purchase_item, minlength=ds.n_items) == 0)[:3]
    ws, cs = rec.score_warm(warm), rec.score_cold(cold)
    assert ws.shape == (7, ds.n_items) and ws.dtype == np.float32
    assert cs.shape == (3, ds.n_items) and np.all(np.isfinite(cs))
    assert rec.validation["warm_scorer"]["kind"] in ("cosine", "dot", "inout_prior")
    assert rec.validation["cold_scorer"]["kind"] == "inout_prior"  # the default ScorerConfig.cold
    assert set(rec.validation["recall@20"]) == {"warm", "cold"}


def test_large_graphs_train_fewer_epochs_within_the_pair_budget(shop_data):
    from recsys.embed.train import planned_epochs

    config = dataclasses.replace(FAST, epochs=6, max_pairs=1000)
    assert planned_epochs(config, 300) == 3 and planned_epochs(config, 5000) == 1
    assert planned_epochs(dataclasses.replace(config, max_pairs=None), 5000) == 6
    ds, graph = shop_data
    capped = train_embeddings(ds, graph, dataclasses.replace(FAST, epochs=4, max_pairs=1), progress=False)
    full = train_embeddings(ds, graph, dataclasses.replace(FAST, epochs=4, max_pairs=None), progress=False)
    assert capped.stats["epochs"] == 1 and full.stats["epochs"] == 4
    assert 3 * capped.stats["pairs"] < full.stats["pairs"]
    with pytest.raises(ValueError, match="max_pairs"):
        dataclasses.replace(FAST, max_pairs=0).validate()
