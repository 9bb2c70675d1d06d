"""The evaluation report: one row per recommender, as a table, a dict or JSON."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from recsys.evaluation.config import EvalConfig
from recsys.evaluation.metrics import SegmentMetrics
from recsys.jsonsafe import json_safe as _json_safe


@dataclass
class RowResult:
    name: str
    fit_s: float
    warm: SegmentMetrics | None
    cold: SegmentMetrics | None
    link_prediction_auc: float | None = None
    error: str | None = None
    fit_peak_mb: float | None = None  # peak resident memory during fit, above the process's before it

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "fit_s": self.fit_s,
            "warm": self.warm.to_dict() if self.warm else None,
            "cold": self.cold.to_dict() if self.cold else None,
            "link_prediction_auc": self.link_prediction_auc,
            "fit_peak_mb": self.fit_peak_mb,
            "error": self.error,
        }


@dataclass
class EvaluationReport:
    config: EvalConfig
    summary: dict  # split and query counts
    rows: list[RowResult] = field(default_factory=list)

    def row(self, name: str) -> RowResult:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict:
        cfg = dataclasses.asdict(self.config)
        cfg["ks"] = list(self.config.ks)
        return {"config": cfg, "summary": _json_safe(self.summary), "rows": [_json_safe(r.to_dict()) for r in self.rows]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_table(self, k: int = 20) -> str:
        """Plain-text table: warm and cold Recall@k, HitRate@k, MRR, coverage@k, warm tail Recall@k, fit time
        and memory, scoring time."""
        s = self.summary
        head = (f"items {s['n_items']}, purchases {s['n_purchases']} (test {s['n_test_purchases']}), "
                f"warm items {s['n_warm_items']}, cold items {s['n_cold_items']}; "
                f"queries warm {s['n_warm_queries']}/{s['n_warm_queries_available']}, "
                f"cold {s['n_cold_queries']}/{s['n_cold_queries_available']}")
        cols = ["method", f"warm R@{k}", f"HR@{k}", "MRR", f"cov@{k}", f"tail R@{k}",
                f"cold R@{k}", f"HR@{k}", "MRR", f"cov@{k}", "AUC", "fit s", "fit MB", "score s"]
        lines = []
        for r in self.rows:
            cells = [r.name]
            for seg, tail in ((r.warm, True), (r.cold, False)):
                if seg is None or seg.n_queries == 0 or k not in seg.recall:
                    cells += ["-"] * (5 if tail else 4)
                else:
                    cells += [f"{seg.recall[k]:.4f}", f"{seg.hit_rate[k]:.4f}", f"{seg.mrr:.4f}",
                              f"{seg.coverage[k]:.3f}"]
                    if tail:
                        cells.append(f"{seg.tail_recall[k]:.4f}" if seg.n_tail_queries and k in seg.tail_recall
                                     else "-")
            cells.append("-" if r.link_prediction_auc is None else f"{r.link_prediction_auc:.4f}")
            cells.append(f"{r.fit_s:.1f}")
            cells.append("-" if r.fit_peak_mb is None else f"{r.fit_peak_mb:,.0f}")
            score_s = sum(seg.score_s for seg in (r.warm, r.cold) if seg is not None)
            cells.append(f"{score_s:.1f}")
            if r.error:
                cells = [r.name, f"failed: {r.error}"]
            lines.append(cells)
        widths = [max(len(c[i]) for c in [cols, *[l for l in lines if len(l) == len(cols)]])
                  for i in range(len(cols))]
        fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        out = [head, fmt(cols), "  ".join("-" * w for w in widths)]
        out += [fmt(c) if len(c) == len(cols) else "  ".join(c) for c in lines]
        return "\n".join(out)
