"""The graph-readiness report (`recsys diagnose`): is the graph pipeline worth it on this data?

The verdict rests on a method comparison under the offline protocol (the same
split and queries as `recsys evaluate`): warm Recall@20 of two graph methods,
LightGCN (a GNN on the user-item graph) and BGE (random walks on the item
graph), against matrix factorisation, all three built from the evaluation
lineup (`recsys.recommenders.lineup.build_rows`). The rule (from the article
the product started from): a relative Recall@20 lift over 3 % for the better
graph method justifies the graph pipeline.

Reported as context, and the verdict only with `--quick` (no comparison),
worded as the weak heuristic it is:

* average clustering coefficient of the user-item bipartite graph (all
  purchases), the definition of Latapy, Magnien & Del Vecchio (2008), as
  networkx's `bipartite.average_clustering(mode="dot")`: cc(u) = mean over the
  2-hop neighbours v of u of |N(u) & N(v)| / |N(u) | N(v)| (0 for a node
  without 2-hop neighbours). The triangle coefficient is always 0 on a
  bipartite graph, hence this one. Computed on up to `clustering_sample`
  sampled nodes per side; the overall value weights the two sides by their
  node counts, as the mean over all nodes would. Rule of thumb: below 0.1
  "mostly random", above 0.3 "community structure". It predicts the method
  comparison poorly: Ta-Feng reads "mostly random" while EGES beats matrix
  factorisation there by about 48 %;
* density and degree distributions of both sides;
* the share of cold items (first bought in the evaluation's test period);
* accounts that look injected (recsys/data/accounts.py: items bought mostly
  by one-off or devoted accounts, bursts of new accounts, duplicated
  baskets), listed with counts; training leaves them out by default
  (`accounts` in the pipeline config), nothing is deleted.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.data.accounts import AccountConfig, screen_accounts
from recsys.data.dataset import Dataset
from recsys.embed.train import TrainConfig
from recsys.evaluation.protocol import EvalConfig, evaluate, prepare
from recsys.jobs.pipeline import PipelineConfig
from recsys.jsonsafe import json_safe as _json_safe
from recsys.recommenders.baselines import user_item_matrix
from recsys.recommenders.lineup import build_rows

RANDOM_BELOW = 0.1
COMMUNITY_ABOVE = 0.3
GRAPH_LIFT_MARGIN = 0.03  # relative warm Recall@20 lift over matrix factorisation that justifies the graph pipeline
BASELINE_ROW = "matrix factorisation"
GRAPH_ROWS = ("LightGCN", "BGE")
COMPARED_ROWS = (BASELINE_ROW, *GRAPH_ROWS)  # lineup row names, the baseline first


@dataclass
class DiagnoseConfig:
    clustering_sample: int = 1000  # nodes per side (exact when a side is smaller)
    compare_methods: bool = True  # run LightGCN and BGE against matrix factorisation (the slow part)
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    chunk_rows: int = 128  # sampled nodes per sparse product
    accounts: AccountConfig = field(default_factory=AccountConfig)  # the rules of the suspicious-account list


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
    mf_recall_20: float | None = None  # warm Recall@20 of the method comparison (None: not run)
    lightgcn_recall_20: float | None = None
    bge_recall_20: float | None = None
    suspicious_accounts: dict = field(default_factory=dict)  # AccountScreen.record: what training leaves out
    verdict: str = ""

    @property
    def structure(self) -> str:
        if self.clustering < RANDOM_BELOW:
            return "mostly random"
        if self.clustering > COMMUNITY_ABOVE:
            return "community structure"
        return "some structure"

    @property
    def gains(self) -> dict[str, float]:
        """Relative warm Recall@20 gain of each compared graph method over matrix factorisation."""
        if self.mf_recall_20 is None:
            return {}
        out = {}
        for name, recall in zip(GRAPH_ROWS, (self.lightgcn_recall_20, self.bge_recall_20)):
            if recall is not None:
                if self.mf_recall_20 == 0:
                    out[name] = float("inf") if recall > 0 else 0.0
                else:
                    out[name] = recall / self.mf_recall_20 - 1.0
        return out

    @property
    def best_graph_method(self) -> str | None:
        gains = self.gains
        return max(gains, key=gains.get) if gains else None

    @property
    def graph_gain(self) -> float | None:
        """The better graph method's relative Recall@20 gain over matrix factorisation (None: not compared)."""
        best = self.best_graph_method
        return None if best is None else self.gains[best]

    @property
    def graph_justified(self) -> bool | None:
        """The rule: the better graph method lifts Recall@20 by more than GRAPH_LIFT_MARGIN (None: not compared)."""
        gain = self.graph_gain
        return None if gain is None else gain > GRAPH_LIFT_MARGIN

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["structure"] = self.structure
        d["gains"] = self.gains
        d["best_graph_method"] = self.best_graph_method
        d["graph_gain"] = self.graph_gain
        d["graph_justified"] = self.graph_justified
        d["lift_margin"] = GRAPH_LIFT_MARGIN
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
        if self.gains:
            recalls = dict(zip(GRAPH_ROWS, (self.lightgcn_recall_20, self.bge_recall_20)))
            methods = ", ".join(f"{name} {recalls[name]:.4f} ({_percent(gain)})" for name, gain in self.gains.items())
            lines.append(f"  warm Recall@20: matrix factorisation {self.mf_recall_20:.4f}, {methods}; "
                         f"a lift over {GRAPH_LIFT_MARGIN:.0%} justifies the graph pipeline")
        lines += suspicious_lines(self.suspicious_accounts)
        lines.append(f"Verdict: {self.verdict}")
        return "\n".join(lines)


def suspicious_lines(record: dict) -> list[str]:
    """The accounts that look injected, one line per pattern."""
    if not record:
        return []
    if not record.get("excluded_accounts"):
        return ["  suspicious accounts: none (no item bought mostly by one-off or devoted accounts, "
                "no burst of new accounts, no duplicated baskets)"]
    reasons = ", ".join(f"{reason} {n['accounts']} accounts / {n['lines']} lines"
                        for reason, n in record["by_reason"].items())
    lines = [f"  suspicious accounts: {record['excluded_accounts']} ({record['excluded_lines']} lines: {reasons}); "
             "training leaves them out (accounts.exclude_suspicious), the database keeps them"]
    for f in record.get("findings", []):
        what = f"item {f['item_id']}" if f.get("item_id") else "basket " + "+".join(f.get("basket_items", []))
        lines.append(f"    {f['rule']}: {what}: {f['accounts']} accounts, {f['observed']} observed vs "
                     f"{f['expected']} expected; e.g. {', '.join(f['example_accounts'])}")
    if record.get("n_findings", 0) > len(record.get("findings", [])):
        lines.append(f"    ... {record['n_findings'] - len(record['findings'])} more patterns")
    return lines


def _percent(gain: float) -> str:
    return "+inf (matrix factorisation scores 0)" if gain == float("inf") else f"{gain:+.1%}"


def verdict_text(report: DiagnoseReport) -> str:
    """The method comparison's verdict when it ran; else the clustering heuristic, said to be weak."""
    parts = []
    gains = report.gains
    looks = "looks mostly random" if report.structure == "mostly random" else f"shows {report.structure}"
    if gains:
        best = report.best_graph_method
        others = ", ".join(f"{name} {_percent(g)}" for name, g in gains.items() if name != best)
        others = f" ({others})" if others else ""
        if report.graph_justified:
            parts.append(f"the graph pipeline is justified: {best} beats matrix factorisation by "
                         f"{_percent(gains[best])} on warm Recall@20{others}, more than the {GRAPH_LIFT_MARGIN:.0%} "
                         "that the rule asks.")
        else:
            parts.append(f"the graph pipeline is not justified by accuracy: the better graph method, {best}, "
                         f"lifts warm Recall@20 over matrix factorisation by {_percent(gains[best])}{others}, "
                         f"not more than {GRAPH_LIFT_MARGIN:.0%}.")
        parts.append(f"For context, the purchase graph {looks} by the clustering rule of thumb "
                     f"({report.clustering:.2f}), a weak heuristic: the comparison decides.")
    else:
        parts.append(f"weak heuristic only (no method comparison was run): the purchase graph {looks} by the "
                     f"clustering rule of thumb ({report.clustering:.2f}; <{RANDOM_BELOW} random, "
                     f">{COMMUNITY_ABOVE} communities), which predicts poorly whether a graph method pays off. "
                     f"Run without --quick: LightGCN and BGE against matrix factorisation decide it "
                     f"(a Recall@20 lift over {GRAPH_LIFT_MARGIN:.0%}).")
    if report.cold_item_share > 0.05:
        parts.append(f"{report.cold_item_share:.0%} of the items bought in the test period were new, "
                     "so cold start from side features (EGES) matters.")
    else:
        parts.append("Few items are new, so cold start matters little here.")
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def diagnose(ds: Dataset, config: DiagnoseConfig | None = None, recommenders=None) -> DiagnoseReport:
    """Build the report; `recommenders` = (matrix factorisation, LightGCN, BGE) overrides the lineup's rows."""
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
        suspicious_accounts=screen_accounts(ds, config.accounts, config.eval_config.session_gap_s).record(ds),
    )
    if config.compare_methods:
        if recommenders is None:
            settings = PipelineConfig(train=TrainConfig(seed=config.seed),
                                      evaluation=dataclasses.replace(config.eval_config, seed=config.seed))
            built = {r.name: r for r in build_rows(list(COMPARED_ROWS), settings)}
            recommenders = [built[name] for name in COMPARED_ROWS]
        recommenders = list(recommenders)
        if len(recommenders) != len(COMPARED_ROWS):
            raise ValueError(f"recommenders must be ({', '.join(COMPARED_ROWS)}), got {len(recommenders)}")
        cfg = dataclasses.replace(config.eval_config, include_link_prediction=False)
        result = evaluate(ds, recommenders, cfg)
        recalls = [row.warm.recall.get(20) for row in result.rows]
        if any(r is None for r in recalls):
            raise ValueError("the evaluation config must include K=20 to compare methods")
        report.mf_recall_20, report.lightgcn_recall_20, report.bge_recall_20 = recalls
    report.verdict = verdict_text(report)
    return report
