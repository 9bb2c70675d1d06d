import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.recommenders.baselines import BoughtTogetherRecommender, ItemCFRecommender, PopularityRecommender
from recsys.data.dataset import from_frames
from recsys.jobs.diagnose import (COMPARED_ROWS, DiagnoseConfig, DiagnoseReport, diagnose, latapy_clustering,
                                  verdict_text)
from recsys.recommenders.lineup import ROW_NAMES


def biadjacency(pairs, shape):
    rows, cols = zip(*pairs)
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)


def test_complete_bipartite_graph_has_clustering_one():
    a = biadjacency([(u, i) for u in range(2) for i in range(3)], (2, 3))
    assert latapy_clustering(a, np.arange(2)).tolist() == [1.0, 1.0]
    assert latapy_clustering(a.T.tocsr(), np.arange(3)).tolist() == [1.0, 1.0, 1.0]


def test_clustering_by_hand():
    # u0 - {i0, i1}, u1 - {i1, i2}, u2 - {i3} (no 2-hop neighbour)
    a = biadjacency([(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)], (3, 4))
    assert latapy_clustering(a, np.arange(3), chunk_rows=2) == pytest.approx([1 / 3, 1 / 3, 0.0])
    # i0: 2-hop {i1}, J = 1/2; i1: {i0, i2}, both 1/2; i3: none
    assert latapy_clustering(a.T.tocsr(), np.arange(4)) == pytest.approx([0.5, 0.5, 0.5, 0.0])


def test_clustering_matches_networkx():
    nx = pytest.importorskip("networkx")
    from networkx.algorithms import bipartite

    a = sp.random(25, 15, density=0.2, random_state=3, format="csr")
    a.data[:] = 1
    g = nx.Graph()
    g.add_nodes_from(("u", i) for i in range(25))
    g.add_nodes_from(("i", j) for j in range(15))
    g.add_edges_from((("u", r), ("i", c)) for r, c in zip(*a.nonzero()))
    ref = bipartite.latapy_clustering(g, mode="dot")
    assert latapy_clustering(a, np.arange(25)) == pytest.approx([ref[("u", i)] for i in range(25)])


def community_shop():
    """Two disjoint groups: each user of a group buys every item of the group (clustering 1)."""
    rows = []
    for day in range(10):
        for u in range(6):
            group = u % 2
            for i in range(4):
                rows.append((f"u{u}", f"g{group}-i{i}", pd.Timestamp(day * 86400, unit="s", tz="UTC")))
    purchases = pd.DataFrame(rows, columns=["user_id", "item_id", "purchased_at"])
    ids = sorted({r[1] for r in rows}) + ["never"]
    items = pd.DataFrame({"item_id": ids, "category": [i.split("-")[0] for i in ids]})
    return from_frames(items, purchases)


class Renamed:
    def __init__(self, rec, name):
        self.rec, self.name = rec, name

    def fit(self, train):
        self.rec.fit(train)

    def score_warm(self, anchors):
        return self.rec.score_warm(anchors)

    def score_cold(self, anchors):
        return self.rec.score_cold(anchors)


def test_diagnose_on_community_graph():
    ds = community_shop()
    report = diagnose(ds, DiagnoseConfig(compare_methods=False))
    assert report.clustering == pytest.approx(1.0)
    assert report.structure == "community structure"
    assert report.n_edges == 24 and report.density == pytest.approx(24 / (6 * 9))
    assert report.never_bought_share == pytest.approx(1 / 9)
    assert report.item_degree["median"] == 3
    assert report.graph_gain is None
    assert "Verdict:" in report.to_text()
    json.dumps(report.to_dict())


def test_diagnose_compares_the_graph_methods_with_matrix_factorisation():
    ds = community_shop()
    recs = [Renamed(PopularityRecommender(), "mf"), Renamed(BoughtTogetherRecommender(), "lightgcn"),
            Renamed(ItemCFRecommender(), "bge")]
    report = diagnose(ds, DiagnoseConfig(), recommenders=recs)
    assert None not in (report.mf_recall_20, report.lightgcn_recall_20, report.bge_recall_20)
    assert set(report.gains) == {"LightGCN", "BGE"}
    assert report.graph_gain == max(report.gains.values())
    text = report.to_text()
    assert "LightGCN" in text and "BGE" in text and "matrix factorisation" in text
    json.dumps(report.to_dict())
    with pytest.raises(ValueError, match="recommenders must be"):
        diagnose(ds, DiagnoseConfig(), recommenders=recs[:2])


def test_the_compared_methods_are_lineup_rows():
    assert COMPARED_ROWS[0] == "matrix factorisation"
    assert set(COMPARED_ROWS) <= set(ROW_NAMES) and {"LightGCN", "BGE"} <= set(COMPARED_ROWS)


def make_report(mf, lightgcn, bge, clustering=0.05, cold=0.0):
    return DiagnoseReport(n_users=1, n_items=1, n_edges=1, density=1.0, clustering_users=clustering,
                          clustering_items=clustering, clustering=clustering,
                          clustering_sampled={"users": 1, "items": 1}, user_degree={}, item_degree={},
                          never_bought_share=0.0, cold_item_share=cold, cold_line_share=0.0,
                          mf_recall_20=mf, lightgcn_recall_20=lightgcn, bge_recall_20=bge)


def test_verdict_uses_the_three_percent_lift():
    assert "is justified" in verdict_text(make_report(0.100, 0.1031, 0.090))
    assert "not justified" in verdict_text(make_report(0.100, 0.1029, 0.090))
    assert make_report(0.100, 0.1031, 0.090).graph_justified is True
    assert make_report(0.100, 0.1029, 0.1029).graph_justified is False
    # the better of the two graph methods decides
    text = verdict_text(make_report(0.100, 0.090, 0.150))
    assert "is justified: BGE beats" in text and "LightGCN -10.0%" in text
    assert make_report(0.100, 0.090, 0.150).best_graph_method == "BGE"
    assert make_report(0.100, 0.110, None).gains == {"LightGCN": pytest.approx(0.1)}
    assert make_report(0.0, 0.1, 0.0).graph_gain == float("inf")


def test_clustering_decides_only_without_the_comparison_and_says_it_is_weak():
    # a random-looking graph with a large graph-method lift: the comparison decides
    text = verdict_text(make_report(0.100, 0.120, 0.148, clustering=0.05))
    assert "is justified" in text and "mostly random" in text and "weak heuristic" in text
    text = verdict_text(make_report(0.100, 0.100, 0.100, clustering=0.4))
    assert "not justified" in text and "community structure" in text
    # --quick: the clustering heuristic is all there is, and the verdict says so
    for clustering, structure in ((0.05, "mostly random"), (0.4, "community structure"), (0.2, "some structure")):
        text = verdict_text(make_report(None, None, None, clustering=clustering))
        assert text.startswith("Weak heuristic only") and structure in text and "justified" not in text
    assert "cold start" in verdict_text(make_report(0.1, 0.2, 0.1, cold=0.3))


def test_diagnose_rejects_empty_data():
    ds = from_frames(pd.DataFrame({"item_id": ["a"], "category": ["c"]}),
                     pd.DataFrame({"user_id": [], "item_id": [], "purchased_at": []}))
    with pytest.raises(ValueError, match="no purchases"):
        diagnose(ds)
