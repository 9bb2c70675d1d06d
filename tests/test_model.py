import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.dataset import Dataset, SideFeature
from recsys.embed.model import EGES, NoiseSampler, aggregate, item_features
from recsys.vectors import attention_weights, cold_start_vectors, price_tier_codes, price_tier_edges


def tiny_dataset() -> Dataset:
    """4 items: two categories, one brand missing, one price unknown."""
    return Dataset(
        item_ids=np.array(["a", "b", "c", "d"], dtype=object),
        category=SideFeature.from_raw("category", ["x", "x", "y", "y"]),
        brand=SideFeature.from_raw("brand", ["p", None, "q", "q"]),
        price=np.array([1.0, 2.0, np.nan, 10.0], dtype=np.float32),
        in_stock=np.ones(4, bool),
        item_created_at=np.zeros(4, np.int64),
    )


def tiny_model(mode="eges", dim=4, seed=0):
    torch.manual_seed(seed)
    feats = item_features(tiny_dataset(), n_price_tiers=2)
    return EGES(torch.from_numpy(feats.codes), feats.cardinalities, dim=dim, mode=mode), feats


def test_price_tiers_are_quantiles_and_nan_is_missing():
    price = np.array([1, 2, 3, 4, 5, 6, 7, 8, np.nan], dtype=np.float32)
    edges = price_tier_edges(price, 4)
    assert np.allclose(edges, np.quantile(price[:-1], [0.25, 0.5, 0.75]))
    codes = price_tier_codes(price, edges)
    assert codes[-1] == 0
    assert codes[:-1].min() == 1 and codes[:-1].max() == 4
    assert np.all(np.diff(codes[:-1]) >= 0)
    # a new item gets its tier from the stored edges, not from a new quantile
    assert price_tier_codes(np.array([0.5, 100.0]), edges).tolist() == [1, 4]


def test_price_tiers_collapse_duplicate_edges_and_reject_bad_count():
    assert len(price_tier_edges(np.ones(50), 10)) == 1
    assert len(price_tier_edges(np.full(3, np.nan), 10)) == 0
    with pytest.raises(ValueError, match="n_tiers"):
        price_tier_edges(np.ones(3), 0)


def test_item_features_drop_features_missing_everywhere():
    ds = tiny_dataset()
    feats = item_features(ds, n_price_tiers=2)
    assert feats.names == ["category", "brand", "price_tier"]
    assert feats.codes.shape == (4, 3)
    assert feats.codes[1, 1] == 0 and feats.codes[2, 2] == 0
    ds.brand = SideFeature.from_raw("brand", [None] * 4)
    assert item_features(ds).names == ["category", "price_tier"]


@pytest.mark.parametrize("mode, n_tables, learns_attention", [("bge", 1, False), ("ges", 4, False), ("eges", 4, True)])
def test_modes_share_one_module(mode, n_tables, learns_attention):
    model, feats = tiny_model(mode)
    assert len(model.tables()) == n_tables
    assert model.attention_logits.shape == (4, n_tables)
    assert model.attention_logits.requires_grad == learns_attention
    assert model(torch.arange(4)).shape == (4, 4)
    assert model.context_embedding.weight.shape == (4, 4)


def test_attention_is_a_softmax_over_present_features():
    model, feats = tiny_model("eges")
    with torch.no_grad():
        model.attention_logits.normal_()
    # the trained model's attention (recsys/vectors.py, what serving explains results with)
    w = torch.from_numpy(attention_weights(model.attention_logits.detach().numpy(), feats.codes))
    assert torch.allclose(w.sum(1), torch.ones(4))
    present = torch.cat([torch.ones(4, 1, dtype=torch.bool), torch.from_numpy(feats.codes > 0)], 1)
    assert torch.all(w[present] > 0)
    assert torch.all(w[~present] == 0)
    # H is exactly that weighted sum of the item's rows
    rows = model.rows(torch.arange(4))
    comps = torch.stack([t[rows[:, j]] for j, t in enumerate(model.tables())], 1)
    expected = (w.unsqueeze(-1) * comps).sum(1)
    assert torch.allclose(model(torch.arange(4)), expected, atol=1e-6)


def test_ges_is_the_plain_average():
    model, feats = tiny_model("ges")
    item = 0  # all features present
    parts = [model.item_embedding.weight[item]] + [t.weight[feats.codes[item, j]]
                                                  for j, t in enumerate(model.side_embeddings)]
    assert torch.allclose(model(torch.tensor([item]))[0], torch.stack(parts).mean(0), atol=1e-6)


def cold_start(model: EGES, codes) -> np.ndarray:
    """The served cold-start vector (recsys/vectors.py) from this module's side tables."""
    tables = [t.weight.detach().numpy() for t in model.side_embeddings]
    return cold_start_vectors(tables, np.asarray(codes), model.dim)


def test_cold_start_is_the_average_of_present_side_embeddings():
    model, feats = tiny_model("eges")
    codes = torch.tensor([[1, 2, 0], [0, 0, 0]])  # category 1, brand 2, price unknown; nothing known
    by_hand = (model.side_embeddings[0].weight[1] + model.side_embeddings[1].weight[2]) / 2
    cold = torch.from_numpy(cold_start(model, codes))
    assert torch.allclose(cold[0], by_hand, atol=1e-7)
    assert torch.all(cold[1] == 0)


def test_dropping_the_id_averages_the_side_features():
    model, feats = tiny_model("eges")
    with torch.no_grad():
        model.attention_logits.normal_()
    h = model(torch.tensor([0]), drop_id=torch.tensor([True]))
    assert torch.allclose(h, torch.from_numpy(cold_start(model, feats.codes[:1])), atol=1e-6)


def test_missing_rows_stay_zero_and_mode_is_checked():
    model, _ = tiny_model("ges")
    for table in model.side_embeddings:
        assert torch.all(table.weight[0] == 0)
    with pytest.raises(ValueError, match="mode"):
        EGES(torch.zeros(2, 1, dtype=torch.long), [2], mode="deepwalk")
    with pytest.raises(ValueError, match="feature_codes"):
        EGES(torch.zeros(2, 2, dtype=torch.long), [2], mode="eges")


def test_aggregate_with_nothing_present_is_zero():
    h, w = aggregate(torch.ones(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert torch.all(h == 0) and torch.all(w == 0)


def test_sgns_loss_matches_the_formula():
    c, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    neg = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    loss = EGES.sgns_loss(c, p, c, neg, torch.tensor([3.0]))
    sig = torch.sigmoid
    expected = -torch.log(sig(torch.tensor(2.0))) - 3 * (torch.log(sig(torch.tensor(0.0))) + torch.log(sig(torch.tensor(-1.0))))
    assert torch.allclose(loss, expected)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=2, max_size=8).filter(lambda c: sum(c) > 0), st.integers(0, 2**31 - 1))
def test_noise_sampler_draws_only_items_with_counts(counts, seed):
    sampler = NoiseSampler(np.array(counts), power=0.75)
    gen = torch.Generator().manual_seed(seed)
    draws = sampler.sample((200, 3), gen)
    assert draws.shape == (200, 3)
    assert set(draws.unique().tolist()) <= {i for i, c in enumerate(counts) if c > 0}


def test_noise_sampler_follows_unigram_to_the_power():
    counts = np.array([1.0, 16.0, 81.0])
    sampler = NoiseSampler(counts, power=0.75)
    draws = sampler.sample((200_000,), torch.Generator().manual_seed(0)).numpy()
    freq = np.bincount(draws, minlength=3) / len(draws)
    expected = counts ** 0.75 / (counts ** 0.75).sum()  # 1 : 8 : 27
    assert np.allclose(freq, expected, atol=0.01)
    with pytest.raises(ValueError, match="noise counts"):
        NoiseSampler(np.zeros(3))
