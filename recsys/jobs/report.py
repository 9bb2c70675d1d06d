"""Run reports: the metrics table beside baselines and the previous version, as markdown/rows."""
from __future__ import annotations


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def metric(row: dict | None, segment: str, name: str, k: int | None = 20):
    seg = (row or {}).get(segment) or {}
    if k is None:
        value = seg.get(name)
    else:
        value = (seg.get(name) or {}).get(str(k))
    return float(value) if isinstance(value, (int, float)) else None


def table_rows(metrics: dict) -> list[dict]:
    """One flat row per evaluation row (for a Prefect table artifact)."""
    out = []
    for name, row in (metrics.get("rows") or {}).items():
        out.append({
            "method": name,
            "warm_recall@20": metric(row, "warm", "recall"), "warm_hitrate@20": metric(row, "warm", "hit_rate"),
            "warm_mrr": metric(row, "warm", "mrr", None), "warm_coverage@20": metric(row, "warm", "coverage"),
            "warm_tail_recall@20": metric(row, "warm", "tail_recall"),
            "cold_recall@20": metric(row, "cold", "recall"), "cold_hitrate@20": metric(row, "cold", "hit_rate"),
            "cold_mrr": metric(row, "cold", "mrr", None), "cold_coverage@20": metric(row, "cold", "coverage"),
            "fit_s": row.get("fit_s"), "fit_peak_mb": row.get("fit_peak_mb"),
        })
    return out


def run_report_markdown(*, version: str, metrics: dict, previous: tuple[str, dict] | None, counts: dict,
                        stages: dict, promoted: bool | None, bundle_path: str, plots: dict[str, str],
                        index_gate: float | None = 0.02, execution: dict | None = None) -> str:
    lines = [f"# recsys version `{version}`", ""]
    status = {True: "promoted to **production**", False: "kept as **candidate** (quality gates failed)",
              None: "not promoted"}[promoted]
    lines += [f"Status: {status}. Bundle: `{bundle_path}`", "", "## Data", ""]
    lines += [f"- {k.replace('_', ' ')}: {v:,}" if isinstance(v, int) else f"- {k.replace('_', ' ')}: {v}"
              for k, v in counts.items()]
    lines += ["", "## Offline metrics (chronological split)", "",
              "| method | warm R@20 | warm HR@20 | warm MRR | warm cov@20 | warm tail R@20 | cold R@20 | cold HR@20 "
              "| cold cov@20 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in table_rows(metrics):
        lines.append(f"| {row['method']} | {_fmt(row['warm_recall@20'])} | {_fmt(row['warm_hitrate@20'])} | "
                     f"{_fmt(row['warm_mrr'])} | {_fmt(row['warm_coverage@20'], 3)} | {_fmt(row['warm_tail_recall@20'])} | "
                     f"{_fmt(row['cold_recall@20'])} | "
                     f"{_fmt(row['cold_hitrate@20'])} | {_fmt(row['cold_coverage@20'], 3)} |")
    lines += ["", *index_check_markdown(metrics.get("index_check"), index_gate)]
    lines += ["", *accounts_markdown(metrics.get("accounts"))]
    lines += ["", "## Against the previous version", ""]
    if previous is None:
        lines.append("No previous production version.")
    else:
        prev_version, prev_metrics = previous
        lines += ["| | this version | previous (`%s`) |" % prev_version, "|---|---|---|"]
        for segment in ("warm", "cold"):
            lines.append(f"| {segment} Recall@20 | {_fmt(metric(metrics, segment, 'recall'))} | "
                         f"{_fmt(metric(prev_metrics, segment, 'recall'))} |")
        for name, label, digits in (("coverage", "warm coverage@20", 3), ("tail_recall", "warm tail Recall@20", 4)):
            lines.append(f"| {label} | {_fmt(metric(metrics, 'warm', name), digits)} | "
                         f"{_fmt(metric(prev_metrics, 'warm', name), digits)} |")
    if execution:
        lines += ["", "## How it ran", ""]
        if execution.get("task_runner") in ("dask", "prefect-dask"):
            tasks = execution.get("evaluation_tasks") or []
            lines.append(f"On Dask ({execution.get('dask_address')}, {execution.get('dask_workers')} workers): "
                         f"{len(tasks)} evaluation tasks on Prefect's DaskTaskRunner, "
                         f"{execution.get('walk_chunks_on_dask')} walk chunks, "
                         f"{execution.get('query_chunks_on_dask', 0)} query chunks and "
                         f"{execution.get('index_shards_on_dask', 0)} index shards as Dask tasks; workers' peak "
                         f"memory (MB): {execution.get('worker_peak_rss_mb') or '-'}. Training: "
                         f"{execution.get('train_processes', 1)} process(es) on {execution.get('train_nodes', 1)} "
                         "node(s).")
        else:
            lines.append(f"On this machine: walks in the flow's process, training on "
                         f"{execution.get('train_processes', 1)} process(es) on {execution.get('train_nodes', 1)} "
                         "node(s).")
    lines += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()]
    if plots:
        lines += ["", "## Plots (in the bundle)", ""]
        lines += [f"- {title}: `{path}`" for title, path in plots.items()]
    return "\n".join(lines) + "\n"


def index_check_markdown(check: dict | None, gate: float | None) -> list[str]:
    """The run's check of its compressed index against exact search, with the layouts it tried."""
    lines = ["## Compressed index against exact search", ""]
    if not check:
        return lines + ["Not checked (index_check disabled): the configured layout ships as it is."]
    gate_text = ("gate overridden (`--allow-index-loss`): promoted whatever the loss" if gate is None
                 else f"promotion gate: at most {gate:.0%}")
    lines += [f"Shipped layout **{check.get('layout')}** ({check.get('factory')} / query {check.get('query_factory')}), "
              f"{check.get('bytes_per_item')} bytes per item; loss {check.get('loss', 0):.2%} of exact Recall@20, "
              f"{check.get('measured_loss', check.get('loss', 0)):.2%} beyond 2 standard errors of query sampling "
              f"(chosen: the smallest within {check.get('max_loss', 0):.0%}; {gate_text}).", "",
              "| layout | bytes/item | warm R@20 index / exact | cold R@20 index / exact | loss | beyond noise |",
              "|---|---|---|---|---|---|"]
    for entry in check.get("candidates", []):
        cells = []
        for segment in ("warm", "cold"):
            seg = entry.get(segment)
            cells.append(f"{_fmt(seg.get('index'))} / {_fmt(seg.get('exact'))}" if seg else "–")
        lines.append(f"| {entry.get('layout')} | {entry.get('bytes_per_item')} | {cells[0]} | {cells[1]} | "
                     f"{entry.get('loss', 0):.2%} | {entry.get('measured_loss', entry.get('loss', 0)):.2%} |")
    return lines


def accounts_markdown(record: dict | None) -> list[str]:
    """What training left out of the purchases and why (recsys/data/accounts.py); nothing is deleted."""
    lines = ["## Accounts left out of training", ""]
    if not record:
        return lines + ["Not screened."]
    if not record.get("excluded_lines"):
        return lines + ["None: no account matched a rule or `accounts.exclude_users`."]
    lines += [f"{record['excluded_lines']:,} purchase lines of {record['excluded_accounts']:,} accounts were left out "
              "(configuration `accounts`; the database keeps them).", "",
              "| reason | accounts | lines |", "|---|---|---|"]
    lines += [f"| {reason} | {n['accounts']:,} | {n['lines']:,} |" for reason, n in record["by_reason"].items()]
    findings = record.get("findings") or []
    if findings:
        lines += ["", "| rule | item | accounts | observed / expected | example accounts |", "|---|---|---|---|---|"]
        lines += [f"| {f['rule']} | {f.get('item_id') or ', '.join(f.get('basket_items', []))} | {f['accounts']} | "
                  f"{f['observed']} / {f['expected']} | {', '.join(f['example_accounts'])} |" for f in findings]
    return lines
