import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.dataset import Dataset, SideFeature
from recsys.data.graph import GraphConfig, ItemGraph, build_item_graph
from recsys.data.sessions import make_baskets

H = 3600
# No filters, no links: the raw rule under test.
PLAIN = GraphConfig(link_gap_s=None, max_basket_size=None, user_lines_quantile=None, max_user_edge_weight=None)


def make_ds(users, items, times, orders=None, n_items=6) -> Dataset:
    users = np.asarray(users, dtype=np.int32)
    m = len(users)
    return Dataset(
        item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
        category=SideFeature.from_raw("category", ["c"] * n_items),
        brand=SideFeature.from_raw("brand", [None] * n_items),
        price=np.full(n_items, np.nan, np.float32),
        in_stock=np.ones(n_items, bool),
        item_created_at=np.zeros(n_items, np.int64),
        purchase_user=users,
        purchase_item=np.asarray(items, dtype=np.int32),
        purchase_time=np.asarray(times, dtype=np.int64),
        purchase_order=np.full(m, -1, np.int64) if orders is None else np.asarray(orders, dtype=np.int64),
        purchase_quantity=np.ones(m, np.int32),
        user_ids=np.array([f"u{u}" for u in range(int(users.max()) + 1 if m else 0)], dtype=object),
    )


def dense(g: ItemGraph) -> np.ndarray:
    return g.to_scipy().toarray().astype(np.float64)


def build(ds, config=PLAIN, **kw):
    return build_item_graph(ds, make_baskets(ds), config, **kw)


def test_weights_by_hand():
    # user 0, day 1: {0,1,2} one timestamp -> clique, 2/3 per pair
    # user 0, day 2: {0,1}                 -> clique, 2/2 = 1
    # user 1: 3 -> 4 -> 5 at distinct times -> sequence, 1 per consecutive pair
    ds = make_ds(users=[0, 0, 0, 0, 0, 1, 1, 1], items=[0, 1, 2, 0, 1, 3, 4, 5],
                 times=[0, 0, 0, 24 * H, 24 * H, 0, 60, 120])
    a = dense(build(ds))
    expected = np.zeros((6, 6))
    for i, j, w in [(0, 1, 2 / 3 + 1), (0, 2, 2 / 3), (1, 2, 2 / 3), (3, 4, 1), (4, 5, 1)]:
        expected[i, j] = expected[j, i] = w
    np.testing.assert_allclose(a, expected, rtol=1e-6)


def test_within_basket_rule_can_be_forced():
    # one basket 0,1,2 at one timestamp; line order 0,1,2
    ds = make_ds(users=[0, 0, 0], items=[0, 1, 2], times=[0, 0, 0])
    seq = dense(build(ds, GraphConfig(within_basket="sequence", link_gap_s=None, user_lines_quantile=None)))
    assert seq[0, 1] == seq[1, 2] == 1 and seq[0, 2] == 0
    # a timed basket forced to a clique
    ds = make_ds(users=[0, 0, 0], items=[0, 1, 2], times=[0, 10, 20])
    clique = dense(build(ds, GraphConfig(within_basket="clique", link_gap_s=None, user_lines_quantile=None)))
    np.testing.assert_allclose(clique[[0, 0, 1], [1, 2, 2]], 2 / 3, rtol=1e-6)


def test_duplicates_are_removed_and_self_loops_dropped():
    # basket 0,1,0 (same time): distinct {0,1} -> weight 2/2
    ds = make_ds(users=[0, 0, 0], items=[0, 1, 0], times=[0, 0, 0])
    a = dense(build(ds))
    assert a[0, 1] == 1 and np.all(np.diag(a) == 0)
    # sequence 0 -> 1 -> 0: the repeat is dropped, only 0-1 once
    ds = make_ds(users=[0, 0, 0], items=[0, 1, 0], times=[0, 10, 20])
    a = dense(build(ds))
    assert a[0, 1] == 1 and a.sum() == 2


def test_consecutive_orders_of_a_user_within_link_gap_are_linked():
    # user 0: order 1 {0,1} at t=0, order 2 {2} 10 min later, order 3 {3} 5 h later
    ds = make_ds(users=[0, 0, 0, 0, 1], items=[0, 1, 2, 3, 4], times=[0, 0, 600, 5 * H, 600],
                 orders=[1, 1, 2, 3, 4])
    cfg = GraphConfig(link_gap_s=H, link_weight=1.0, user_lines_quantile=None)
    g = build(ds, cfg)
    a = dense(g)
    assert a[0, 1] == 1
    assert a[0, 2] == a[1, 2] == 0.5  # one link shared by 2 x 1 pairs
    assert a[2, 3] == 0 and a[:, 4].sum() == 0  # too late; other user
    assert g.info["basket_links"] == 1
    no_links = dense(build(ds, GraphConfig(link_gap_s=None, user_lines_quantile=None)))
    assert no_links[0, 2] == 0


def test_link_between_baskets_sharing_an_item_has_no_self_loop():
    ds = make_ds(users=[0, 0], items=[0, 0], times=[0, 60], orders=[1, 2])
    g = build(ds, GraphConfig(link_gap_s=H, user_lines_quantile=None))
    assert g.n_edges == 0 and g.degree().sum() == 0


def test_giant_baskets_are_skipped_or_subsampled():
    items = list(range(6))
    ds = make_ds(users=[0] * 6, items=items, times=[0] * 6)
    skip = build(ds, GraphConfig(max_basket_size=4, oversize="skip", link_gap_s=None, user_lines_quantile=None))
    assert skip.n_edges == 0 and skip.info["baskets_oversized"] == 1
    sub = build(ds, GraphConfig(max_basket_size=4, oversize="subsample", link_gap_s=None,
                                user_lines_quantile=None, seed=3))
    assert (sub.degree() > 0).sum() == 4 and sub.n_edges == 6  # a clique on 4 of the 6 items
    np.testing.assert_allclose(sub.weights, 0.5)
    again = build(ds, GraphConfig(max_basket_size=4, oversize="subsample", link_gap_s=None,
                                  user_lines_quantile=None, seed=3))
    np.testing.assert_array_equal(again.indices, sub.indices)


def test_min_edge_weight_drops_light_edges():
    # {0,1,2,3} once (weight 1/2 per pair), {0,1} again (+1)
    ds = make_ds(users=[0] * 6, items=[0, 1, 2, 3, 0, 1], times=[0, 0, 0, 0, 9 * H, 9 * H])
    g = build(ds, GraphConfig(min_edge_weight=1.0, link_gap_s=None, user_lines_quantile=None, max_user_edge_weight=None))
    assert g.n_edges == 1 and dense(g)[0, 1] == 1.5


def test_over_active_users_are_dropped():
    # user 0 has 4 lines, users 1 and 2 have 2 each
    ds = make_ds(users=[0, 0, 0, 0, 1, 1, 2, 2], items=[0, 1, 2, 3, 4, 5, 4, 5], times=[0] * 8)
    by_count = build(ds, GraphConfig(max_user_lines=3, link_gap_s=None, user_lines_quantile=None))
    assert by_count.degree()[:4].sum() == 0 and dense(by_count)[4, 5] == 2
    assert by_count.info["users_dropped"] == 1
    by_quantile = build(ds, GraphConfig(user_lines_quantile=0.5, link_gap_s=None))
    assert by_quantile.degree()[:4].sum() == 0 and by_quantile.info["users_dropped"] == 1
    kept = build(ds, GraphConfig(user_lines_quantile=1.0, link_gap_s=None))
    assert kept.degree()[:4].sum() > 0


def test_purchase_mask_restricts_to_selected_lines():
    ds = make_ds(users=[0, 0, 0, 0], items=[0, 1, 2, 3], times=[0, 0, 9 * H, 9 * H])
    g = build(ds, purchase_mask=np.array([True, True, False, False]))
    assert g.n_edges == 1 and dense(g)[0, 1] == 1
    with pytest.raises(ValueError, match="purchase_mask"):
        build(ds, purchase_mask=np.array([1, 1, 0, 0]))
    with pytest.raises(ValueError, match="purchase_mask"):
        build(ds, purchase_mask=np.array([True]))


def test_bad_config_is_a_clear_error():
    ds = make_ds(users=[0], items=[0], times=[0])
    for bad in [dict(within_basket="chain"), dict(oversize="drop"), dict(max_basket_size=1),
                dict(link_weight=0), dict(user_lines_quantile=1.5), dict(min_edge_weight=-1)]:
        with pytest.raises(ValueError, match="GraphConfig"):
            build(ds, GraphConfig(**bad))


def test_from_edges_sums_both_directions_and_validates():
    g = ItemGraph.from_edges(4, [0, 1, 2, 3], [1, 0, 2, 1], [1.0, 2.0, 5.0, 0.5])
    a = dense(g)
    assert a[0, 1] == a[1, 0] == 3 and a[2, 2] == 0 and a[1, 3] == 0.5
    src, dst, w = g.edges()
    assert sorted(zip(src.tolist(), dst.tolist(), w.tolist())) == [(0, 1, 3.0), (1, 3, 0.5)]
    assert g.degree().tolist() == [1, 2, 0, 1]
    np.testing.assert_allclose(g.strength(), [3, 3.5, 0, 0.5])
    with pytest.raises(ValueError, match="outside"):
        ItemGraph.from_edges(2, [0], [2])
    with pytest.raises(ValueError, match="> 0"):
        ItemGraph.from_edges(2, [0], [1], [0.0])


def test_to_pyg_round_trip():
    from torch_geometric.utils import is_undirected

    g = ItemGraph.from_edges(5, [0, 0, 1, 3], [1, 2, 2, 4], [1.0, 0.5, 2.0, 3.0])
    data = g.to_pyg()
    assert data.num_nodes == 5 and data.edge_index.shape == (2, 8)
    assert is_undirected(data.edge_index, data.edge_weight)
    back = ItemGraph.from_pyg(data)
    np.testing.assert_array_equal(back.indptr, g.indptr)
    np.testing.assert_array_equal(back.indices, g.indices)
    np.testing.assert_allclose(back.weights, g.weights)


@st.composite
def shops(draw):
    n = draw(st.integers(1, 50))
    users = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    times = draw(st.lists(st.sampled_from([0, 0, 0, 60, 2 * H, 30 * H]), min_size=n, max_size=n))
    order = np.lexsort((times, users))
    return make_ds(np.asarray(users)[order], np.asarray(items)[order], np.asarray(times)[order], n_items=8)


@settings(max_examples=100, deadline=None)
@given(shops(), st.sampled_from(["auto", "clique", "sequence"]))
def test_graph_is_a_symmetric_csr_and_each_basket_weighs_n_minus_1(ds, rule):
    baskets = make_baskets(ds)
    g = build_item_graph(ds, baskets, GraphConfig(within_basket=rule, link_gap_s=None, max_basket_size=None,
                                                  user_lines_quantile=None, max_user_edge_weight=None))
    assert g.indptr.dtype == np.int64 and g.indices.dtype == np.int32 and g.weights.dtype == np.float32
    m = g.to_scipy()
    assert m.has_sorted_indices and (m != m.T).nnz == 0 and m.diagonal().sum() == 0
    assert np.all(g.weights > 0)
    # Both rules give a basket of n distinct items a total weight n-1 (sequence
    # of n-1 unit edges, or n(n-1)/2 pairs of 2/n) unless a repeat inside a
    # sequence would be a self-loop, which cannot happen after de-duplication.
    distinct = [len(set(ds.purchase_item[baskets == b].tolist())) for b in range(baskets.max() + 1)]
    np.testing.assert_allclose(g.edges()[2].astype(np.float64).sum(), sum(n - 1 for n in distinct), rtol=1e-5)
