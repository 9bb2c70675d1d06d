"""The compressed similar-items index: search, filters, files, size, recall, and the EGES+PQ row."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.recommenders.compressed import CompressedRecommender
from recsys.serving.index import IndexConfig, SimilarityIndex, exact_search, measure_recall

N, DIM = 3000, 32


def clustered(n: int, dim: int, seed: int = 0, n_clusters: int = 40, spread: float = 0.3) -> np.ndarray:
    """Gaussian mixture plus a popularity-prior column, like the scorer's [context, beta log pop]."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    x = centers[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, dim))
    prior = 0.25 * np.log1p(rng.zipf(1.5, n).clip(max=10_000))
    return np.concatenate([x, prior[:, None]], axis=1).astype(np.float32)


def queries_for(items: np.ndarray, seed: int = 1) -> np.ndarray:
    """Per-item query side: [a noisy copy of the vector, 1] (the prior column's query weight is 1)."""
    rng = np.random.default_rng(seed)
    body = items[:, :-1] + 0.2 * rng.normal(size=items[:, :-1].shape)
    return np.concatenate([body, np.ones((len(items), 1))], axis=1).astype(np.float32)


ITEMS = clustered(N, DIM)
QUERIES = queries_for(ITEMS)
CONFIGS = {
    "pq": IndexConfig(factory="PQ8", query_factory="PQ8", recall_queries=200),  # no IDSelector: over-fetch path
    "ivf": IndexConfig(factory="IVF16,PQ8", query_factory="PQ8", nprobe=2, recall_queries=200),  # selector path
    "rerank": IndexConfig(factory="PQ4", rerank="SQ8", query_factory="PQ8", k_factor=3, recall_queries=200),
    # the default layout: 4-bit fast-scan candidates, the prior in its own code, re-scored with the exact prior
    "auto": IndexConfig(pq_min_items=1, recall_queries=200),
}


@pytest.fixture(scope="module")
def indexes() -> dict[str, SimilarityIndex]:
    return {name: SimilarityIndex.build(ITEMS, QUERIES, config) for name, config in CONFIGS.items()}


def test_search_round_trip(indexes):
    for index in indexes.values():
        scores, ids = index.search(QUERIES[:20], 10)
        assert scores.shape == ids.shape == (20, 10)
        assert scores.dtype == np.float32 and ids.dtype == np.int64
        assert ((ids >= 0) & (ids < N)).all()
        assert (np.diff(scores, axis=1) <= 1e-6).all(), "scores come best first"
        assert all(len(set(row)) == 10 for row in ids.tolist())
        assert index.n_items == N and index.query_vectors([0, 5]).shape == (2, DIM + 1)


def test_recall_against_exact_search_on_clustered_data(indexes):
    for name, index in indexes.items():
        recall = measure_recall(index, ITEMS, QUERIES[:300], k=10)
        assert recall >= 0.5, (name, recall)
        assert 0.0 <= index.stats["recall_at_10"] <= 1.0
    # re-ranking from finer codes finds more of the exact top 10 than the 4-byte first stage alone
    first_stage = SimilarityIndex.build(ITEMS, QUERIES, IndexConfig(factory="PQ4", query_factory="PQ8",
                                                                    recall_queries=0))
    assert measure_recall(indexes["rerank"], ITEMS, QUERIES[:300]) > measure_recall(first_stage, ITEMS, QUERIES[:300])


def test_decoded_query_side_approximates_the_query_matrix(indexes):
    rows = np.arange(0, N, 7)
    error = np.linalg.norm(indexes["pq"].query_vectors(rows) - QUERIES[rows], axis=1)
    assert np.median(error / np.linalg.norm(QUERIES[rows], axis=1)) < 0.35


def test_save_and_load_give_identical_results(indexes, tmp_path):
    for name, index in indexes.items():
        folder = tmp_path / name
        index.save(folder)
        assert {p.suffix for p in folder.iterdir()} <= {".faiss", ".json", ".npy"}  # no pickle anywhere
        loaded = SimilarityIndex.load(folder)
        allowed = np.arange(N) % 3 == 0
        for kwargs in ({}, {"allowed": allowed}, {"exclude": np.arange(50)}):
            a, b = index.search(QUERIES[:30], 10, **kwargs), loaded.search(QUERIES[:30], 10, **kwargs)
            np.testing.assert_array_equal(a[1], b[1])
            np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
        np.testing.assert_array_equal(index.query_vectors(np.arange(40)), loaded.query_vectors(np.arange(40)))
        assert loaded.bytes_per_item == index.bytes_per_item and loaded.stats == index.stats


def test_load_rejects_a_folder_without_an_index(tmp_path):
    with pytest.raises(ValueError, match="index.json"):
        SimilarityIndex.load(tmp_path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(CONFIGS)), k=st.integers(1, 20), n_allowed=st.integers(0, N),
       n_excluded=st.integers(0, 30), seed=st.integers(0, 2**31 - 1))
def test_filters_return_k_allowed_items_whenever_k_exist(indexes, name, k, n_allowed, n_excluded, seed):
    rng = np.random.default_rng(seed)
    allowed = np.zeros(N, bool)
    allowed[rng.choice(N, n_allowed, replace=False)] = True
    excluded = rng.choice(N, n_excluded, replace=False)
    remaining = allowed.copy()
    remaining[excluded] = False
    scores, ids = indexes[name].search(QUERIES[rng.choice(N, 3)], k, allowed=allowed, exclude=excluded)
    expected = min(k, int(remaining.sum()))
    assert (ids[:, :expected] >= 0).all(), "k results whenever k items are allowed"
    assert (ids[:, expected:] == -1).all() and np.isneginf(scores[:, expected:]).all()
    found = ids[ids >= 0]
    assert remaining[found].all(), "never a disallowed or excluded item"
    assert all(len(set(row[row >= 0])) == (row >= 0).sum() for row in ids)


def test_restrictive_filters_use_the_exact_fallback_and_match_decoded_scores(indexes):
    index = indexes["pq"]
    allowed = np.zeros(N, bool)
    allowed[[3, 70, 400, 2999]] = True
    scores, ids = index.search(QUERIES[:5], 3, allowed=allowed)
    decoded = index.candidate_vectors(np.flatnonzero(allowed))
    expected = np.sort(QUERIES[:5] @ decoded.T, axis=1)[:, ::-1][:, :3]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_per_query_exclusions(indexes):
    index = indexes["ivf"]
    _, first = index.search(QUERIES[:4], 5)
    exclude = np.full((4, 2), -1)
    exclude[:, 0] = first[:, 0]  # each query drops its own best hit
    _, ids = index.search(QUERIES[:4], 5, exclude=exclude)
    assert (ids >= 0).all() and not (ids == first[:, :1]).any()
    np.testing.assert_array_equal(ids[:, :4], first[:, 1:5])


def test_code_bytes_per_item_are_an_eighth_of_the_float32_vectors_or_less():
    """Marginal bytes per extra item (codebooks are a fixed cost) at dim 64 + prior, against the float32
    vectors the index stands for: the candidate side (65 floats) and the query side (64)."""
    config = IndexConfig(recall_queries=0, pq_min_items=1)  # "auto" at scale
    items = clustered(3000, 64, seed=3)
    queries = queries_for(items, seed=4)
    small = SimilarityIndex.build(items[:1500], queries[:1500], config)
    large = SimilarityIndex.build(items, queries, config)
    assert large.meta["factory_used"] == "PQ65x4fs" and large.meta["query_factory_used"] == "PQ16"
    assert large.meta["prior_exact"] and large.stats["prior_bytes"] == 2 * 3000
    per_item = (large.stats["total_bytes"] - small.stats["total_bytes"]) / 1500
    assert per_item <= (64 + 65) * 4 / 8, per_item
    shared = SimilarityIndex.build(items[:, :64], items[:, :64], config)  # cosine/dot: one side stored once
    assert shared.meta["query_side"] == "candidates" and shared.stats["query_bytes"] == 0
    assert not shared.meta["prior_exact"]


def test_fast_scan_search_returns_the_decoded_ranking_with_the_exact_prior(indexes):
    """The first stage scans 4-bit codes with 8-bit look-up tables; the re-scored pool gives the ranking of
    the decoded vectors, whose prior column is the exact one."""
    index = indexes["auto"]
    assert index.meta["factory_used"] == "PQ33x4fs" and index.meta["prior_exact"]
    decoded = index.candidate_vectors()
    np.testing.assert_allclose(decoded[:, -1], ITEMS[:, -1], rtol=1e-3, atol=1e-3)
    queries = index.query_vectors(np.arange(100))
    scores, ids = index.search(queries, 10)
    truth = np.argsort(-(queries @ decoded.T), axis=1, kind="stable")[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, ids)])
    assert overlap >= 0.97, overlap
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ decoded.T, ids, 1), rtol=1e-5, atol=1e-5)


def test_tiny_catalogue_falls_back_and_pads_results():
    items, queries = clustered(40, 8, seed=5), queries_for(clustered(40, 8, seed=5))
    index = SimilarityIndex.build(items, queries, IndexConfig(recall_queries=10))
    assert index.meta["factory_used"] == "SQ8"  # too few vectors to train 256-centroid PQ codebooks
    forced = SimilarityIndex.build(items, queries, IndexConfig(factory="PQ4", recall_queries=0))
    assert forced.meta["factory_used"] == "SQ8"  # an explicit factory FAISS cannot train falls back too
    scores, ids = index.search(queries[:2], 50)
    assert (ids[:, :40] >= 0).all() and (ids[:, 40:] == -1).all() and np.isneginf(scores[:, 40:]).all()
    _, truth = exact_search(items, queries[:2], 5)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(truth, ids[:, :5])]) >= 4


def test_bad_input_is_a_clear_error(indexes):
    index = indexes["pq"]
    with pytest.raises(ValueError, match="columns"):
        index.search(QUERIES[:2, :-1], 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(QUERIES[:2], 0)
    with pytest.raises(ValueError, match="allowed"):
        index.search(QUERIES[:2], 5, allowed=np.ones(N - 1, bool))
    with pytest.raises(ValueError, match="exclude"):
        index.search(QUERIES[:2], 5, exclude=np.array([N]))
    with pytest.raises(ValueError, match="item_indices"):
        index.query_vectors([N])
    with pytest.raises(ValueError, match="NaN"):
        SimilarityIndex.build(np.full((10, 4), np.nan), None)
    with pytest.raises(ValueError, match="query_matrix"):
        SimilarityIndex.build(ITEMS, QUERIES[:10])
    with pytest.raises(ValueError, match="k_factor"):
        IndexConfig(k_factor=0).validate()


def test_compressed_recommender_on_a_synthetic_shop():
    from recsys.data.synthetic import ShopConfig, generate_shop
    from recsys.embed.train import TrainConfig
    from recsys.recommenders.eges import EGESRecommender, ScorerConfig

    ds = generate_shop(ShopConfig(n_items=300, n_users=200, n_baskets=1500)).to_dataset()
    base = EGESRecommender(TrainConfig(dim=16, walks_per_node=4), ScorerConfig(warm="inout_prior", prior_beta=0.5))
    rec = CompressedRecommender(base, IndexConfig(factory="PQ4", query_factory="PQ4"))
    with pytest.raises(ValueError, match="fit"):
        rec.score_warm(np.array([0]))
    rec.fit(ds)
    assert rec.name == "EGES+PQ" and base.trained is not None
    warm_items = np.flatnonzero(np.bincount(ds.purchase_item, minlength=ds.n_items) > 0)[:7]
    warm, cold = rec.score_warm(warm_items), rec.score_cold(np.arange(5))
    assert warm.shape == (7, ds.n_items) and cold.shape == (5, ds.n_items)
    assert warm.dtype == np.float32 and np.isfinite(warm).all() and np.isfinite(cold).all()
    # the compressed scores rank like the exact model's
    exact = base.score_warm(warm_items)
    top_exact = np.argsort(-exact, axis=1)[:, :20]
    top_pq = np.argsort(-warm, axis=1)[:, :20]
    assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(top_exact, top_pq)]) >= 0.5
    assert rec.warm_index.bytes_per_item > 0


def same_up_to_ties(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
    """Equal scores everywhere, equal ids wherever the score is not tied with a neighbour's."""
    (sa, ia), (sb, ib) = a, b
    if not np.array_equal(sa, sb):
        return False
    tied = np.zeros(sa.shape, bool)
    tied[:, 1:] |= sa[:, 1:] == sa[:, :-1]
    tied[:, :-1] |= sa[:, :-1] == sa[:, 1:]
    return bool((ia[~tied] == ib[~tied]).all()) and all(set(x) == set(y) for x, y in zip(ia.tolist(), ib.tolist()))


@pytest.mark.parametrize("name", ["auto", "ivf"])
@pytest.mark.parametrize("n_shards", [2, 4])
def test_shards_answer_as_the_unsharded_index(indexes, name, n_shards, tmp_path):
    import dataclasses

    sharded = SimilarityIndex.build(ITEMS, QUERIES, dataclasses.replace(CONFIGS[name], shards=n_shards))
    whole = indexes[name]
    assert sharded.meta["shard_bounds"][-1] == N and len(sharded.meta["shard_bounds"]) == n_shards + 1
    queries = whole.query_vectors(np.arange(60))
    np.testing.assert_array_equal(sharded.query_vectors(np.arange(60)), queries)
    np.testing.assert_array_equal(sharded.candidate_vectors(np.arange(0, N, 7)), whole.candidate_vectors(np.arange(0, N, 7)))
    rng = np.random.default_rng(3)
    allowed = rng.random(N) < 0.2
    exclude = rng.integers(0, N, (60, 5))
    for kwargs in ({}, {"allowed": allowed}, {"exclude": exclude}, {"allowed": allowed, "exclude": exclude}):
        got = sharded.search(queries, 10, **kwargs)
        assert same_up_to_ties(got, whole.search(queries, 10, **kwargs)), kwargs
        assert (got[1] >= 0).all(), "k results under filters"
        if "allowed" in kwargs:
            assert allowed[got[1]].all()
    sharded.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").glob("candidates*")) == [
        f"candidates.{i}.faiss" for i in range(n_shards)]
    loaded = SimilarityIndex.load(tmp_path / "index")
    assert same_up_to_ties(loaded.search(queries, 10, allowed=allowed), sharded.search(queries, 10, allowed=allowed))


def test_an_ivf_fast_scan_index_read_back_from_files_answers_as_built(tmp_path):
    """FAISS cannot reconstruct rows of an IVF fast-scan index read from a file (it crashed the client at
    1M items): the codes are decoded from the inverted lists instead."""
    built = SimilarityIndex.build(ITEMS, QUERIES, IndexConfig(ivf_min_items=1, pq_min_items=1, recall_queries=0))
    assert built.meta["factory_used"].startswith("IVF") and "x4fs" in built.meta["factory_used"]
    built.save(tmp_path / "ivf")
    loaded = SimilarityIndex.load(tmp_path / "ivf")
    queries = loaded.query_vectors(np.arange(40))
    np.testing.assert_array_equal(queries, built.query_vectors(np.arange(40)))
    np.testing.assert_array_equal(loaded.candidate_vectors(np.arange(0, N, 11)), built.candidate_vectors(np.arange(0, N, 11)))
    assert same_up_to_ties(loaded.search(queries, 10), built.search(queries, 10))
