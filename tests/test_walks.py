import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from recsys.data.graph import ItemGraph
from recsys.data.walks import build_alias_table, generate_walks, iter_walks, n_walks


def alias_probabilities(graph: ItemGraph) -> np.ndarray:
    """The per-edge transition probability an alias table encodes."""
    table = build_alias_table(graph)
    deg = graph.degree()
    node = np.repeat(np.arange(graph.n_items), deg)
    assert np.all(node[table.alias] == node)  # aliases stay within the node
    assert np.all((table.prob >= 0) & (table.prob <= 1))
    kept = table.prob / deg[node]
    received = np.bincount(table.alias, weights=(1 - table.prob) / deg[node], minlength=len(kept))
    return kept + received


def expected_probabilities(graph: ItemGraph) -> np.ndarray:
    node = np.repeat(np.arange(graph.n_items), graph.degree())
    return graph.weights / graph.strength()[node]


@st.composite
def graphs(draw, max_nodes=12):
    n = draw(st.integers(1, max_nodes))
    m = draw(st.integers(0, 3 * n))
    src = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    dst = draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))
    w = draw(st.lists(st.floats(1e-3, 1e3), min_size=m, max_size=m))
    return ItemGraph.from_edges(n, src, dst, w)


def star(weights) -> ItemGraph:
    k = len(weights)
    return ItemGraph.from_edges(k + 1, np.zeros(k, int), np.arange(1, k + 1), weights)


@settings(max_examples=200, deadline=None)
@given(graphs(max_nodes=20))
def test_alias_tables_encode_edge_weights_exactly(graph):
    np.testing.assert_allclose(alias_probabilities(graph), expected_probabilities(graph), atol=1e-8)


def test_alias_table_with_skewed_and_equal_weights():
    g = star([1e-4, 1.0, 1.0, 1.0, 5e3, 3.0, 1e-4])
    np.testing.assert_allclose(alias_probabilities(g), expected_probabilities(g), atol=1e-8)
    g = star([2.0] * 9)
    np.testing.assert_allclose(alias_probabilities(g), expected_probabilities(g), atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(graphs(), st.integers(1, 6), st.integers(0, 3), st.integers(0, 2**31))
def test_every_step_follows_an_edge(graph, walk_length, walks_per_node, seed):
    walks = generate_walks(graph, walk_length, walks_per_node, seed)
    active = np.flatnonzero(graph.degree() > 0)
    assert walks.dtype == np.int32 and walks.shape == (len(active) * walks_per_node, walk_length)
    # each node with an edge starts exactly walks_per_node walks; isolated nodes none
    starts = np.bincount(walks[:, 0], minlength=graph.n_items) if len(walks) else np.zeros(graph.n_items)
    assert np.all(starts[active] == walks_per_node) and starts.sum() == len(active) * walks_per_node
    adjacency = graph.to_scipy()
    for a, b in zip(walks[:, :-1].ravel(), walks[:, 1:].ravel()):
        assert adjacency[a, b] > 0  # symmetric graph without isolates: never a dead end


def test_dead_ends_pad_with_minus_one_as_a_suffix():
    # a directed CSR: 0 -> 1 -> 2, and 2 has no way out
    g = ItemGraph(n_items=3, indptr=np.array([0, 1, 2, 2], np.int64), indices=np.array([1, 2], np.int32),
                  weights=np.ones(2, np.float32))
    walks = generate_walks(g, walk_length=5, walks_per_node=3, seed=1)
    assert sorted(map(tuple, walks.tolist())) == [(0, 1, 2, -1, -1)] * 3 + [(1, 2, -1, -1, -1)] * 3


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 30), st.integers(1, 8), st.integers(0, 2**31))
def test_minus_one_only_as_suffix_on_random_directed_graphs(n, walk_length, seed):
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, 3, size=n)  # some nodes are sinks
    indptr = np.r_[0, np.cumsum(deg)].astype(np.int64)
    g = ItemGraph(n_items=n, indptr=indptr, indices=rng.integers(0, n, size=deg.sum()).astype(np.int32),
                  weights=rng.uniform(0.1, 2, size=deg.sum()).astype(np.float32))
    walks = generate_walks(g, walk_length, 2, seed)
    pad = walks < 0
    assert np.all(pad[:, 1:] >= pad[:, :-1])  # once -1, always -1
    assert not pad[:, 0].any()
    for row in walks:
        steps = row[row >= 0]
        for a, b in zip(steps[:-1], steps[1:]):
            assert b in g.indices[g.indptr[a]:g.indptr[a + 1]]
        if len(steps) < walk_length:
            assert g.degree()[steps[-1]] == 0  # stopped at a sink


def test_walks_are_deterministic_and_independent_of_batch_size(monkeypatch):
    import recsys.data.walks as walks_module

    monkeypatch.setattr(walks_module, "CHUNK_WALKS", 64)  # several chunks per round on a small graph
    rng = np.random.default_rng(0)
    g = ItemGraph.from_edges(300, rng.integers(0, 300, 1500), rng.integers(0, 300, 1500), rng.uniform(0.5, 2, 1500))
    reference = generate_walks(g, 8, 3, seed=7)
    for batch_size in [1, 50, 64, 1000, 10**6]:
        batches = list(iter_walks(g, 8, 3, seed=7, batch_size=batch_size))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert all(len(b) == batch_size for b in batches[:-1])
        np.testing.assert_array_equal(np.concatenate(batches), reference)
    assert not np.array_equal(generate_walks(g, 8, 3, seed=8), reference)


def test_start_nodes_shard_the_walks():
    g = ItemGraph.from_edges(6, [0, 1, 2, 3], [1, 2, 3, 4])  # node 5 is isolated
    assert n_walks(g, walks_per_node=4) == 20
    shards = [generate_walks(g, 3, 4, seed=0, start_nodes=np.array(s)) for s in ([0, 1, 5], [2, 3, 4])]
    starts = np.concatenate([s[:, 0] for s in shards])
    assert sorted(starts.tolist()) == sorted([0, 1, 2, 3, 4] * 4)
    with pytest.raises(ValueError, match="start_nodes"):
        generate_walks(g, start_nodes=np.array([6]))


def test_starts_are_shuffled_per_round():
    g = ItemGraph.from_edges(200, np.arange(199), np.arange(1, 200))
    walks = generate_walks(g, walk_length=1, walks_per_node=2, seed=0)
    first, second = walks[:200, 0], walks[200:, 0]
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(200))  # each round: every node once
    assert not np.array_equal(first, np.arange(200)) and not np.array_equal(first, second)


def test_empty_cases_and_bad_arguments():
    g = ItemGraph.from_edges(3, [], [])
    assert generate_walks(g, 4, 5).shape == (0, 4)
    g = star([1.0, 2.0])
    assert generate_walks(g, walk_length=1, walks_per_node=2).shape == (6, 1)
    assert generate_walks(g, walks_per_node=0).shape == (0, 10)
    for bad in [dict(walk_length=0), dict(walks_per_node=-1), dict(batch_size=0)]:
        with pytest.raises(ValueError):
            next(iter_walks(g, **bad))


def test_transition_frequencies_match_edge_weights():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 9.5])
    g = star(weights)  # the leaves only lead back to the centre
    walks = generate_walks(g, walk_length=11, walks_per_node=400, seed=123)
    from_centre = walks[:, 1:][walks[:, :-1] == 0]
    observed = np.bincount(from_centre, minlength=len(weights) + 1)[1:]
    expected = weights / weights.sum() * observed.sum()
    assert observed.sum() > 10_000
    assert chisquare(observed, expected).pvalue > 1e-3
    np.testing.assert_allclose(observed / observed.sum(), weights / weights.sum(), atol=0.01)


def test_transition_frequencies_on_a_random_graph():
    rng = np.random.default_rng(5)
    g = ItemGraph.from_edges(40, rng.integers(0, 40, 200), rng.integers(0, 40, 200), rng.uniform(0.1, 5, 200))
    walks = generate_walks(g, walk_length=20, walks_per_node=200, seed=9)
    a, b = walks[:, :-1].ravel(), walks[:, 1:].ravel()
    pair_counts = np.zeros((40, 40))
    np.add.at(pair_counts, (a, b), 1)
    for node in np.flatnonzero(g.degree() > 1):
        nbrs, w = g.neighbors(node)
        observed = pair_counts[node, nbrs]
        w = w.astype(np.float64)
        expected = w / w.sum() * observed.sum()
        # Bonferroni over the nodes: a correct sampler fails this with probability < 1e-3
        assert chisquare(observed, expected).pvalue > 1e-3 / 40
