"""Training noise against the number of training processes: the shipped row's Recall@20 over seeds.

    python bench/bench_train_noise.py [--processes 1,2] [--seeds 0,1,2] [--max-queries 20000]

On Ta-Feng, under the contract's protocol (the last 15% of purchases held
out), fits and scores the shipped row (EGES, its compressed index and the
blend, each choice made on the training period's validation tail) once per
(processes, seed), EGES trained on that many torch.distributed ranks
(`recsys.embed.distributed`). One JSON line: every run's warm and cold
Recall@20, and per process count their mean, spread and the ratio of its mean
to one process's. The contract asks that results do not depend on the number
of workers beyond training noise: this measures both.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TAFENG_PATH, emit, load_average, log, machine, tafeng_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tafeng", type=Path, default=TAFENG_PATH)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-queries", type=int, default=20000)
    args = parser.parse_args()

    from recsys.evaluation.protocol import prepare
    from recsys.jobs.pipeline import PipelineConfig, evaluate_group
    from recsys.recommenders.lineup import SHIPPED_ROW

    processes = [int(p) for p in args.processes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {"bench": "train_noise", "data": "tafeng", "processes": processes, "seeds": seeds,
           "max_queries": args.max_queries, "load_avg_before": load_average()}
    ds = tafeng_dataset(args.tafeng)
    runs = []
    for seed in seeds:  # seeds outermost: a load change on the machine hits both process counts alike
        config = PipelineConfig.from_dict({"seed": seed, "evaluation": {
            "seed": 0, "max_queries": args.max_queries, "include_link_prediction": False}})  # the same queries
        prep = prepare(ds, config.evaluation)
        for p in processes:
            t = time.perf_counter()
            results, _ = evaluate_group(ds, prep, config, (SHIPPED_ROW,), log=lambda *a: None, train_processes=p)
            row = next(r for r in results if r.name == SHIPPED_ROW)
            run = {"seed": seed, "processes": p, "warm_recall@20": row.warm.recall[20],
                   "cold_recall@20": row.cold.recall[20] if row.cold else None,
                   "wall_s": round(time.perf_counter() - t, 1)}
            log(str(run))
            runs.append(run)
    out["runs"] = runs
    summary = {}
    for p in processes:
        mine = [r for r in runs if r["processes"] == p]
        summary[p] = {seg: {"mean": statistics.mean(r[f"{seg}_recall@20"] for r in mine),
                            "min": min(r[f"{seg}_recall@20"] for r in mine),
                            "max": max(r[f"{seg}_recall@20"] for r in mine)} for seg in ("warm", "cold")}
    base = summary[processes[0]]
    for p in processes:
        for seg in ("warm", "cold"):
            summary[p][seg]["ratio_to_first"] = summary[p][seg]["mean"] / base[seg]["mean"]
            # the spread between seeds at this process count, relative to its mean: the training noise
            summary[p][seg]["seed_spread"] = (summary[p][seg]["max"] - summary[p][seg]["min"]) / summary[p][seg]["mean"]
    out["summary"] = {str(p): s for p, s in summary.items()}
    emit({**out, "load_avg_after": load_average(), **machine()})


if __name__ == "__main__":
    main()
