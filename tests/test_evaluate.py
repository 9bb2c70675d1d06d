import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toy_data import make_dataset
from recsys.recommenders.baselines import PopularityRecommender
from recsys.evaluation.link_prediction import auc_from_scores, link_prediction_auc, sample_non_edges, undirected_edges
from recsys.evaluation.metrics import score_queries, tie_break_order, top_k_leftmost
from recsys.evaluation.protocol import EvalConfig, evaluate, prepare
from recsys.evaluation.queries import QuerySet, build_queries
from recsys.evaluation.split import split_chronological
from recsys.data.graph import ItemGraph


def queries(anchors, targets):
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in targets])])
    return QuerySet(np.array(anchors), indptr, np.array([x for t in targets for x in t], dtype=np.int64),
                    n_available=len(anchors))


def test_metrics_on_hand_computed_case():
    table = {0: [9, 5, 4, 1, 3, 0], 1: [0, 0, 0, 0, 0, 0], 3: [5, 4, 3, 9, 2, 1]}
    qs = queries([0, 1, 3], [[2, 4], [5], [0, 1, 2, 4, 5]])
    m = score_queries(lambda a: np.array([table[int(x)] for x in a], np.float32), qs,
                      columns=np.arange(6), n_items=6, ks=(1, 3), mask_anchor=True)
    # rankings: q0 -> 1,2,4,3,5 (first hit at 2); q1 -> 0,2,3,4,5 (hit at 5); q2 -> 0,1,2,4,5 (hit at 1)
    assert m.recall == pytest.approx({1: 1 / 3, 3: 2 / 3})
    assert m.hit_rate == pytest.approx({1: 1 / 3, 3: 2 / 3})
    assert m.mrr == pytest.approx((1 / 2 + 1 / 5 + 1) / 3)
    assert m.coverage == pytest.approx({1: 2 / 6, 3: 5 / 6})
    assert m.n_queries == 3


def test_recall_denominator_caps_at_k():
    qs = queries([0], [[1, 2, 3, 4]])
    m = score_queries(lambda a: np.array([[0, 4, 3, 2, 1]], np.float32), qs, np.arange(5), 5, (2,), True)
    assert m.recall[2] == 1.0  # 2 hits / min(4, 2)


def test_columns_restrict_and_order_candidates():
    # Item 2 is not a candidate (not warm); columns put item 3 before item 1 in the tie order.
    qs = queries([0], [[1]])
    m = score_queries(lambda a: np.zeros((1, 4), np.float32), qs, columns=np.array([3, 1, 0]), n_items=4,
                      ks=(1, 2), mask_anchor=True)
    assert m.recall == {1: 0.0, 2: 1.0}
    assert m.mrr == pytest.approx(0.5)


def test_nan_scores_and_wrong_shape_are_rejected():
    qs = queries([0], [[1]])
    with pytest.raises(ValueError, match="NaN"):
        score_queries(lambda a: np.full((1, 3), np.nan, np.float32), qs, np.arange(3), 3, (1,), True)
    with pytest.raises(ValueError, match="shape"):
        score_queries(lambda a: np.zeros((1, 2), np.float32), qs, np.arange(3), 3, (1,), True)


def test_tie_break_order_is_popularity_then_id():
    order = tie_break_order(np.array([1, 5, 5, 0]), np.array(["d", "c", "a", "b"], dtype=object))
    assert order.tolist() == [2, 1, 0, 3]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(1, 14), st.integers(0, 10_000))
def test_top_k_leftmost_matches_a_full_stable_sort(b, m, k, seed):
    scores = np.random.default_rng(seed).integers(0, 3, size=(b, m)).astype(np.float32)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, m)]
    assert np.array_equal(top_k_leftmost(scores, k), expected)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 15), st.integers(1, 14), st.integers(0, 10_000), st.booleans())
def test_one_pass_ranking_matches_a_full_stable_sort(b, n_items, k, seed, mask_anchor):
    """rank_rows (numba, one pass a row) = stable sort of the ranked columns, anchor at -inf."""
    from recsys.evaluation.ranking import rank_rows

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 3, size=(b, n_items)).astype(np.float32)  # many ties
    columns = rng.permutation(n_items)[:rng.integers(1, n_items + 1)]
    m = len(columns)
    anchor_col = rng.integers(-1, m, size=b) if mask_anchor else np.full(b, -1)
    n_targets = rng.integers(1, m + 1, size=b)
    t_cols = np.concatenate([rng.choice(m, t, replace=False) for t in n_targets])
    t_indptr = np.concatenate([[0], np.cumsum(n_targets)])
    top, rank, nan = rank_rows(raw, columns, anchor_col, t_indptr, t_cols, k)
    scores = raw[:, columns]
    rows = np.flatnonzero(anchor_col >= 0)
    scores[rows, anchor_col[rows]] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    assert np.array_equal(top, order[:, :min(k, m)]) and not nan
    for r in range(b):
        position = {c: i for i, c in enumerate(order[r])}
        assert rank[r] == 1 + min(position[c] for c in t_cols[t_indptr[r]:t_indptr[r + 1]])
    raw[0, columns[0]] = np.nan
    assert rank_rows(raw, columns, np.full(b, -1), t_indptr, t_cols, k)[2]


def test_all_equal_scores_rank_like_popularity():
    ds = make_dataset([(0, "u1", ["a", "b"]), (1, "u2", ["b", "c"]), (2, "u3", ["b", "a"]),
                       (10, "u1", ["a", "c"]), (11, "u2", ["b", "c"])])

    class Constant:
        name = "constant"

        def fit(self, train):
            self.n = train.n_items

        def score_warm(self, anchors):
            return np.zeros((len(anchors), self.n), np.float32)

        score_cold = score_warm

    cfg = EvalConfig(test_fraction=0.4, ks=(1, 2), include_link_prediction=False)
    report = evaluate(ds, [Constant(), PopularityRecommender()], cfg)
    assert report.row("constant").warm.to_dict() | {"score_s": 0} == \
        report.row("popularity").warm.to_dict() | {"score_s": 0}


def test_split_puts_each_timestamp_on_one_side():
    times = [1, 1, 1, 2, 2, 3, 3, 3, 3, 4]
    ds = make_dataset([(t, f"u{i}", ["a"]) for i, t in enumerate(times)])
    split = split_chronological(ds, 0.2)  # exact cut falls inside the t=3 group: 1 line is closer than 5
    assert split.test_starts_at == 4 and split.n_test == 1
    split = split_chronological(ds, 0.4)  # 4 wanted: t>=3 gives 5, t>3 gives 1
    assert split.test_starts_at == 3 and split.n_test == 5
    assert split.train.n_items == ds.n_items and split.train.n_purchases == 5
    assert split.train.purchase_time.max() < 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=40), st.floats(0.05, 0.95))
def test_split_invariants(times, fraction):
    ds = make_dataset([(t, f"u{i}", ["a"]) for i, t in enumerate(times)])
    if len(set(times)) == 1:
        with pytest.raises(ValueError, match="one timestamp"):
            split_chronological(ds, fraction)
        return
    split = split_chronological(ds, fraction)
    test_t = ds.purchase_time[split.test_mask]
    assert 0 < len(test_t) < len(times)
    assert split.train.purchase_time.max() < test_t.min() == split.test_starts_at


def test_split_rejects_bad_fraction():
    ds = make_dataset([(0, "u", ["a"]), (1, "u", ["b"])])
    with pytest.raises(ValueError, match="test_fraction"):
        split_chronological(ds, 1.0)


def toy_shop():
    return make_dataset([
        (0, "u1", ["a", "b"]), (1, "u2", ["a", "c"]),  # training: a, b, c warm
        (10, "u1", ["a", "b", "d"]), (11, "u2", ["e", "c"]), (12, "u3", ["f"]),  # d, e, f first bought here
    ])


def test_warm_cold_classification_and_queries():
    ds = toy_shop()
    idx = ds.item_index()
    prep = prepare(ds, EvalConfig(test_fraction=0.6))
    assert prep.split.test_starts_at == 10
    name = lambda mask: sorted(ds.item_ids[mask].tolist())
    assert name(prep.warm) == ["a", "b", "c"] and name(prep.cold) == ["d", "e", "f"]
    wq = prep.warm_queries
    pairs = {(ds.item_ids[a], tuple(ds.item_ids[wq.targets[wq.indptr[q]:wq.indptr[q + 1]]]))
             for q, a in enumerate(wq.anchors)}
    assert pairs == {("a", ("b",)), ("b", ("a",))}  # the basket with one warm item (c) asks nothing
    cq = prep.cold_queries
    pairs = {(ds.item_ids[a], tuple(sorted(ds.item_ids[cq.targets[cq.indptr[q]:cq.indptr[q + 1]]])))
             for q, a in enumerate(cq.anchors)}
    assert pairs == {("d", ("a", "b")), ("e", ("c",))}  # f has no warm basket mate: skipped
    assert prep.columns.tolist() == [idx["a"], idx["b"], idx["c"]]  # popularity 2, 1, 1; then id


def test_queries_are_sampled_with_a_fixed_seed():
    basket = np.repeat(np.arange(50), 3)
    item = np.tile([0, 1, 2], 50) + np.repeat(np.arange(50) % 2, 3) * 3
    warm, cold = np.ones(6, bool), np.zeros(6, bool)
    a, _ = build_queries(basket, item, warm, cold, max_queries=7, seed=3)
    b, _ = build_queries(basket, item, warm, cold, max_queries=7, seed=3)
    assert a.n_queries == 7 and a.n_available == 150
    assert np.array_equal(a.anchors, b.anchors) and np.array_equal(a.targets, b.targets)
    assert a.target_counts().tolist() == [2] * 7


def test_report_table_and_json():
    ds = toy_shop()
    report = evaluate(ds, [PopularityRecommender()], EvalConfig(test_fraction=0.6, include_link_prediction=False))
    text = report.to_table()
    assert "popularity" in text and "warm R@20" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rows"][0]["warm"]["recall"]["20"] == 1.0  # targets always in the top 20 of 3 items
    assert data["summary"]["n_cold_items"] == 3


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        evaluate(toy_shop(), [PopularityRecommender(), PopularityRecommender()], EvalConfig(test_fraction=0.6))


def test_auc_rank_statistic():
    assert auc_from_scores([3, 4], [1, 2]) == 1.0
    assert auc_from_scores([1], [1]) == 0.5
    assert auc_from_scores([1, 3], [2]) == 0.5
    with pytest.raises(ValueError):
        auc_from_scores([], [1])


def two_cliques(size=8):
    src, dst = [], []
    for base in (0, size):
        for i in range(size):
            for j in range(i + 1, size):
                src.append(base + i)
                dst.append(base + j)
    src.append(0)
    dst.append(size)  # one bridge
    return ItemGraph.from_edges(2 * size, src, dst)


def test_link_prediction_hides_a_third_and_scores_communities():
    graph = two_cliques()
    n_edges = len(undirected_edges(graph))
    seen = {}

    def community_vectors(train_graph):
        seen["edges"] = len(undirected_edges(train_graph))
        return np.repeat(np.eye(2, dtype=np.float32), 8, axis=0)

    auc = link_prediction_auc(None, community_vectors, seed=0, graph=graph)
    assert seen["edges"] == n_edges - round(n_edges / 3)
    assert auc > 0.95  # hidden edges are within a clique; non-edges cross between the two

    pair_scorer = lambda g: (lambda u, v: np.zeros(len(u)))
    assert link_prediction_auc(None, pair_scorer, seed=0, graph=graph) == 0.5


def test_sample_non_edges_avoids_edges():
    graph = two_cliques(5)
    edges = undirected_edges(graph)
    neg = sample_non_edges(10, 20, edges, np.random.default_rng(0))
    keys = set(map(tuple, edges.tolist()))
    assert len(neg) == 20 and not any(tuple(p) in keys for p in neg.tolist())
    assert (neg[:, 0] < neg[:, 1]).all()
    with pytest.raises(ValueError, match="non-edges"):
        sample_non_edges(10, 100, edges, np.random.default_rng(0))
