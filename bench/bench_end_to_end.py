"""End-to-end benchmark: the train-and-publish flow on full Ta-Feng, or on a synthetic 1M-item shop.

Each run uses a fresh RECSYS_HOME (a temporary folder) with its own embedded
Postgres and a temporary Prefect server (ephemeral mode). The data is loaded
first (timed, but not part of the flow's target), then
`flows.train_and_publish.train_and_publish` runs once in a child process; the
flow's own per-stage wall times are reported with:
* peak_rss_mb: the flow process's peak resident memory (ru_maxrss),
* peak_tree_rss_mb: the largest sum of resident memory over the flow process
  and its children (the temporary Prefect server), sampled every 0.5 s.
The Postgres server's memory is in neither.

    python bench/bench_end_to_end.py                 # full Ta-Feng (target: under 5 minutes)
    python bench/bench_end_to_end.py --size 1m       # 1M items, ~10M purchase lines (target: 30 min, 8 GB)
    python bench/bench_end_to_end.py --profile /tmp/flow.txt   # py-spy the flow (.svg: flame graph, else raw stacks)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TAFENG_PATH, emit, load_average, log, machine  # noqa: E402

SIZES = {
    # (target seconds for the flow, target peak GB)
    "tafeng": (300, None),
    "1m": (1800, 8.0),
}
SHOP_1M = dict(n_items=1_000_000, n_users=500_000, n_categories=300, brands_per_category=20, n_communities=2000,
               n_baskets=3_200_000)

LOAD_CHILD = r"""
import json, sys, time
from pathlib import Path
from recsys.config import get_settings
from recsys.ingest.db import get_engine
from recsys.ingest.load import load_frames
size, path, shop = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
engine = get_engine(get_settings())
t = time.perf_counter()
if size == "tafeng":
    from recsys.ingest.loaders.tafeng import read_frames
    frames = read_frames(path)
else:
    from recsys.ingest.loaders.generic import read_frames
    from recsys.data.synthetic import ShopConfig, generate_shop
    generated = generate_shop(ShopConfig(**shop))
    generate_s = time.perf_counter() - t
    items_path, purchases_path = generated.write_csv(Path(path))
    side = generated.extra_side_features
    del generated
    frames = read_frames(items_path, purchases_path, side_features=side)
read_s = time.perf_counter() - t
report = load_frames(engine, frames)
print(json.dumps({"read_s": read_s, "load_s": time.perf_counter() - t - read_s,
                  "input_rows": report.input_rows, "accounted_rows": report.accounted_rows}))
"""

FLOW_CHILD = r"""
import json, resource, sys, time
from flows.train_and_publish import train_and_publish
url, config, how = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
t = time.perf_counter()
result = train_and_publish(database_url=url, config=config, force=True, **how)
print(json.dumps({"wall_s": time.perf_counter() - t, "stages": result["stages"], "version": result["version"],
                  "promoted": result["promoted"], "metrics": result.get("metrics"), "execution": result.get("execution"),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def parse_execution(text: str) -> dict:
    """"local", "dask2", "proc2", "dask2+proc2": the flow's dask_workers / train_processes."""
    how = {}
    for part in filter(None, text.split("+")):
        if part == "local":
            continue
        if part.startswith("dask"):
            how["dask_workers"] = int(part[4:])
        elif part.startswith("proc"):
            how["train_processes"] = int(part[4:])
        else:
            raise SystemExit(f"unknown execution {part!r} (local, daskN, procN, joined by +)")
    return how


def run_flow(env: dict, url: str, config: dict, timeout_s: float, profile: Path | None, logdir: Path,
             how: dict | None = None) -> dict:
    cmd = [sys.executable, "-c", FLOW_CHILD, url, json.dumps(config), json.dumps(how or {})]
    if profile is not None:
        py_spy = Path(sys.executable).parent / "py-spy"
        fmt = "flamegraph" if profile.suffix == ".svg" else "raw"  # raw: collapsed stacks, one per line
        cmd = [str(py_spy), "record", "--subprocesses", "--rate", "20", "--format", fmt, "-o", str(profile),
               "--", *cmd]
    # Output goes to files, not pipes: the temporary Prefect server inherits them and may outlive a killed flow.
    out_path, err_path = logdir / "flow.out", logdir / "flow.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err, start_new_session=True)
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        result = {"error": f"flow did not finish within {timeout_s:.0f}s", "wall_s": round(time.perf_counter() - started)}
        if profile is not None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        os.killpg(proc.pid, signal.SIGKILL)  # the flow and its Prefect server: the group started above
        proc.wait()
    else:
        result = None
    finally:
        done.set()
    tail = err_path.read_text(errors="replace").strip().splitlines()[-10:]
    if result is None and proc.returncode != 0:
        result = {"error": f"flow failed (exit {proc.returncode})"}
    if result is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return {**result, "peak_tree_rss_mb": round(peak[0]), "stderr_tail": tail}
    result = json.loads(out_path.read_text().strip().splitlines()[-1])
    result["peak_tree_rss_mb"] = round(peak[0])
    try:  # the temporary Prefect server normally exits with the flow; make sure
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tafeng")
    parser.add_argument("--tafeng", type=Path, default=TAFENG_PATH)
    parser.add_argument("--timeout-s", type=float, default=None, help="give up on the flow after this long")
    parser.add_argument("--profile", type=Path, help="py-spy flame graph (SVG) of the flow process")
    parser.add_argument("--config", default="{}", help="PipelineConfig fields as JSON")
    parser.add_argument("--executions", default="local",
                        help="comma-separated ways to run the flow on the same loaded data, one after the other: "
                             "local, dask2, proc2, dask2+proc2 (one JSON line each)")
    args = parser.parse_args()
    target_s, target_gb = SIZES[args.size]
    timeout_s = args.timeout_s or 2 * target_s

    home = Path(tempfile.mkdtemp(prefix="recsys-bench-e2e-"))
    env = {**os.environ, "RECSYS_HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for name in ("RECSYS_DATABASE_URL", "PREFECT_API_URL"):
        env.pop(name, None)
    record = {"bench": "end_to_end", "size": args.size, "runs": 1, "load_avg_before": load_average()}
    try:
        url = subprocess.run([sys.executable, "-c", "from recsys.ingest.db import database_url; print(database_url())"],
                             env=env, cwd=REPO, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        log(f"{args.size}: loading")
        source = str(args.tafeng) if args.size == "tafeng" else str(home / "shop")
        loaded = subprocess.run([sys.executable, "-c", LOAD_CHILD, args.size, source, json.dumps(SHOP_1M)], env=env,
                                cwd=REPO, check=True, capture_output=True, text=True).stdout
        record["load"] = {k: round(v, 1) if isinstance(v, float) else v
                          for k, v in json.loads(loaded.strip().splitlines()[-1]).items()}
        if args.size == "1m":
            record["shop"] = SHOP_1M
            shutil.rmtree(home / "shop", ignore_errors=True)
        for execution in args.executions.split(","):
            log(f"{args.size}: running the flow, {execution} (timeout {timeout_s:.0f}s)")
            flow = run_flow(env, url, json.loads(args.config), timeout_s, args.profile, home,
                            parse_execution(execution))
            run = {**record, "execution": execution, "flow": flow}
            if "stages" in flow:
                run["flow_s"] = flow["stages"].get("total", flow["wall_s"])
                run["target_s"] = target_s
                run["meets_time_target"] = run["flow_s"] < target_s
                if target_gb is not None:
                    run["target_peak_gb"] = target_gb
                    run["meets_memory_target"] = max(flow["peak_rss_mb"], flow["peak_tree_rss_mb"]) / 1024 < target_gb
            if args.profile:
                run["profile"] = str(args.profile)
            emit({**run, "load_avg_after": load_average(), **machine()})
    finally:
        subprocess.run([sys.executable, "-m", "recsys.app.cli", "db", "stop"], env=env, cwd=REPO, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
