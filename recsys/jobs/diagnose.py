"""The graph-readiness report (`recsys diagnose`): is a graph method worth it on this data?

Measures the user-item bipartite graph (all purchases):

* average clustering coefficient, bipartite definition of Latapy, Magnien &
  Del Vecchio (2008), as networkx's `bipartite.average_clustering(mode="dot")`:
  cc(u) = mean over the 2-hop neighbours v of u of |N(u) & N(v)| / |N(u) | N(v)|
  (0 for a node without 2-hop neighbours). The triangle coefficient is always
  0 on a bipartite graph, hence this one. Computed on up to `clustering_sample`
  sampled nodes per side; the overall value weights the two sides by their
  node counts, as the mean over all nodes would. Rule of thumb: below 0.1 the
  graph is mostly random, above 0.3 it has community structure;
* density and degree distributions of both sides;
* the share of cold items (first bought in the evaluation's test period);
* BGE vs matrix factorisation warm Recall@20 under the offline protocol: the
  graph method is worth it when it wins by more than 5 % (relative).

It ends in a plain verdict.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.data.dataset import Dataset
from recsys.embed.train import TrainConfig
from recsys.evaluation.protocol import EvalConfig, evaluate, prepare
from recsys.jobs.pipeline import PipelineConfig
from recsys.jsonsafe import json_safe as _json_safe
from recsys.recommenders.lineup import build_rows

RANDOM_BELOW = 0.1
COMMUNITY_ABOVE = 0.3
GRAPH_WIN_MARGIN = 0.05


@dataclass
class DiagnoseConfig:
    clustering_sample: int = 1000  # nodes per side (exact when a side is smaller)
    compare_methods: bool = True  # run BGE vs matrix factorisation (the slow part)
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    chunk_rows: int = 128  # sampled nodes per sparse product


def user_item_matrix(ds: Dataset) -> sp.csr_matrix:
    """Binary users x items biadjacency matrix of all purchases."""
    n_users = max(ds.n_users, int(ds.purchase_user.max()) + 1 if ds.n_purchases else 0)
    m = sp.csr_matrix((np.ones(ds.n_purchases, np.float32),
                       (ds.purchase_user.astype(np.int64), ds.purchase_item.astype(np.int64))),
                      shape=(n_users, ds.n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def latapy_clustering(biadjacency: sp.csr_matrix, nodes: np.ndarray, chunk_rows: int = 128) -> np.ndarray:
    """Latapy clustering cc(u) of the given row nodes of a binary biadjacency matrix."""
    a = biadjacency.tocsr()
    degree = np.diff(a.indptr).astype(np.float64)
    at = a.T.tocsr()
    out = np.zeros(len(nodes), dtype=np.float64)
    for lo in range(0, len(nodes), chunk_rows):
        batch = np.asarray(nodes[lo:lo + chunk_rows], dtype=np.int64)
        overlap = (a[batch] @ at).tocoo()  # |N(u) & N(v)| for every 2-hop pair
        u_pos, v = overlap.row, overlap.col.astype(np.int64)
        other = v != batch[u_pos]
        u_pos, v, inter = u_pos[other], v[other], overlap.data[other].astype(np.float64)
        jaccard = inter / (degree[batch[u_pos]] + degree[v] - inter)
        sums = np.bincount(u_pos, weights=jaccard, minlength=len(batch))
        counts = np.bincount(u_pos, minlength=len(batch))
        out[lo:lo + len(batch)] = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    return out


def degree_summary(degree: np.ndarray) -> dict:
    d = np.asarray(degree, dtype=np.float64)
    if len(d) == 0:
        return {"n": 0}
    q = np.percentile(d, [50, 90, 99])
    return {"n": int(len(d)), "min": float(d.min()), "median": float(q[0]), "mean": float(d.mean()),
            "p90": float(q[1]), "p99": float(q[2]), "max": float(d.max()),
            "share_degree_1": float((d == 1).mean())}


@dataclass
class DiagnoseReport:
    n_users: int
    n_items: int
    n_edges: int  # distinct user-item pairs
    density: float
    clustering_users: float
    clustering_items: float
    clustering: float
    clustering_sampled: dict  # nodes used per side
    user_degree: dict
    item_degree: dict
    never_bought_share: float  # catalogue items without any purchase
    cold_item_share: float  # items first bought in the test period / items bought in it
    cold_line_share: float  # test purchase lines on cold items
    mf_recall_20: float | None = None
    bge_recall_20: float | None = None
    verdict: str = ""

    @property
    def structure(self) -> str:
        if self.clustering < RANDOM_BELOW:
            return "mostly random"
        if self.clustering > COMMUNITY_ABOVE:
            return "community structure"
        return "some structure"

    @property
    def graph_gain(self) -> float | None:
        """Relative Recall@20 gain of BGE over matrix factorisation."""
        if self.mf_recall_20 is None or self.bge_recall_20 is None:
            return None
        if self.mf_recall_20 == 0:
            return float("inf") if self.bge_recall_20 > 0 else 0.0
        return self.bge_recall_20 / self.mf_recall_20 - 1.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["structure"] = self.structure
        d["graph_gain"] = self.graph_gain
        return _json_safe(d)

    def to_text(self) -> str:
        ud, id_ = self.user_degree, self.item_degree
        lines = [
            "Graph-readiness report",
            f"  user-item graph: {self.n_users} users, {self.n_items} items, {self.n_edges} edges, "
            f"density {self.density:.2e}",
            f"  bipartite clustering (Latapy): {self.clustering:.3f} -> {self.structure} "
            f"(users {self.clustering_users:.3f}, items {self.clustering_items:.3f}; "
            f"sampled {self.clustering_sampled['users']} users, {self.clustering_sampled['items']} items; "
            f"<{RANDOM_BELOW} random, >{COMMUNITY_ABOVE} communities)",
            f"  items per user: median {ud.get('median', 0):g}, mean {ud.get('mean', 0):.1f}, "
            f"p99 {ud.get('p99', 0):g}, max {ud.get('max', 0):g}",
            f"  users per item: median {id_.get('median', 0):g}, mean {id_.get('mean', 0):.1f}, "
            f"p99 {id_.get('p99', 0):g}, max {id_.get('max', 0):g}, "
            f"bought by one user {id_.get('share_degree_1', 0):.1%}",
            f"  cold items: {self.cold_item_share:.1%} of items bought in the test period "
            f"({self.cold_line_share:.1%} of its lines); never bought: {self.never_bought_share:.1%} of the catalogue",
        ]
        if self.graph_gain is not None:
            lines.append(f"  warm Recall@20: BGE {self.bge_recall_20:.4f} vs matrix factorisation "
                         f"{self.mf_recall_20:.4f} ({self.graph_gain:+.1%})")
        lines.append(f"Verdict: {self.verdict}")
        return "\n".join(lines)


def verdict_text(report: DiagnoseReport) -> str:
    parts = []
    gain = report.graph_gain
    if gain is not None:
        if gain > GRAPH_WIN_MARGIN:
            parts.append(f"a graph method is worth it: BGE beats matrix factorisation by {gain:.0%} "
                         f"on warm Recall@20 (more than {GRAPH_WIN_MARGIN:.0%}).")
        else:
            parts.append(f"a graph method is not worth it on its own: BGE does not beat matrix "
                         f"factorisation by more than {GRAPH_WIN_MARGIN:.0%} on warm Recall@20 ({gain:+.0%}).")
    elif report.structure == "mostly random":
        parts.append("the purchase graph looks mostly random, so a graph method is unlikely to pay off "
                     "(run with the method comparison to be sure).")
    else:
        parts.append(f"the purchase graph shows {report.structure}, so a graph method may pay off "
                     "(run with the method comparison to be sure).")
    if gain is not None:
        looks = "looks mostly random" if report.structure == "mostly random" else f"shows {report.structure}"
        parts.append(f"The purchase graph {looks} (clustering {report.clustering:.2f}).")
    if report.cold_item_share > 0.05:
        parts.append(f"{report.cold_item_share:.0%} of the items bought in the test period were new, "
                     "so cold start from side features (EGES) matters.")
    else:
        parts.append("Few items are new, so cold start matters little here.")
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def diagnose(ds: Dataset, config: DiagnoseConfig | None = None, recommenders=None) -> DiagnoseReport:
    """Build the report; `recommenders` = (matrix factorisation, BGE) overrides the defaults."""
    config = config or DiagnoseConfig()
    if config.clustering_sample < 1:
        raise ValueError(f"clustering_sample must be >= 1, got {config.clustering_sample}")
    if ds.n_purchases == 0:
        raise ValueError("the dataset has no purchases: nothing to diagnose")
    rng = np.random.default_rng(config.seed)
    ui = user_item_matrix(ds)
    iu = ui.T.tocsr()
    users = np.flatnonzero(np.diff(ui.indptr) > 0)
    items = np.flatnonzero(np.diff(iu.indptr) > 0)
    sample_u = np.sort(rng.choice(users, size=min(len(users), config.clustering_sample), replace=False))
    sample_i = np.sort(rng.choice(items, size=min(len(items), config.clustering_sample), replace=False))
    cc_u = float(latapy_clustering(ui, sample_u, config.chunk_rows).mean())
    cc_i = float(latapy_clustering(iu, sample_i, config.chunk_rows).mean())
    cc = (cc_u * len(users) + cc_i * len(items)) / (len(users) + len(items))
    n_edges = int(ui.nnz)

    prep = prepare(ds, config.eval_config)
    bought_in_test = np.bincount(ds.purchase_item[prep.split.test_mask], minlength=ds.n_items) > 0
    test_items = ds.purchase_item[prep.split.test_mask]
    report = DiagnoseReport(
        n_users=len(users), n_items=ds.n_items, n_edges=n_edges,
        density=n_edges / max(1, len(users) * ds.n_items),
        clustering_users=cc_u, clustering_items=cc_i, clustering=cc,
        clustering_sampled={"users": len(sample_u), "items": len(sample_i)},
        user_degree=degree_summary(np.diff(ui.indptr)[users]),
        item_degree=degree_summary(np.diff(iu.indptr)[items]),
        never_bought_share=float(1.0 - len(items) / max(1, ds.n_items)),
        cold_item_share=float(prep.cold.sum() / max(1, bought_in_test.sum())),
        cold_line_share=float(prep.cold[test_items].mean()) if len(test_items) else 0.0,
    )
    if config.compare_methods:
        if recommenders is None:
            settings = PipelineConfig(train=TrainConfig(seed=config.seed),
                                      evaluation=dataclasses.replace(config.eval_config, seed=config.seed))
            recommenders = build_rows(["matrix factorisation", "BGE"], settings)
        mf, bge = recommenders
        cfg = config.eval_config
        cfg = type(cfg)(**{**cfg.__dict__, "include_link_prediction": False})
        result = evaluate(ds, [mf, bge], cfg)
        report.mf_recall_20 = result.rows[0].warm.recall.get(20)
        report.bge_recall_20 = result.rows[1].warm.recall.get(20)
        if report.mf_recall_20 is None:
            raise ValueError("the evaluation config must include K=20 to compare methods")
    report.verdict = verdict_text(report)
    return report
