"""Load benchmark: `recsys load --dataset tafeng` into a fresh embedded Postgres.

Prints one JSON line: wall seconds of the first load and of an idempotent reload,
rows per second, and the peak resident memory of the loading process (the
Postgres server's own memory is not included). Each run uses a new RECSYS_HOME.

    python bench/bench_load.py [--dataset tafeng|online-retail] [--path FILE] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PATHS = {
    "tafeng": REPO.parent / "shared/data/tafeng/ta_feng.csv.zip",
    "online-retail": REPO.parent / "shared/data/online_retail/online_retail.parquet",
}
ROWS = {"tafeng": 817_741, "online-retail": 541_909}

CHILD = """
import json, resource, sys, time
from recsys.config import get_settings
from recsys.ingest.db import get_engine
from recsys.ingest.load import load_frames
from recsys.ingest.migrate import migrate
dataset, path = sys.argv[1], sys.argv[2]
if dataset == "tafeng":
    from recsys.ingest.loaders.tafeng import read_frames
else:
    from recsys.ingest.loaders.online_retail import read_frames
engine = get_engine(get_settings())
migrate(engine)
times = []
for _ in range(2):
    t = time.perf_counter()
    report = load_frames(engine, read_frames(path))
    times.append(time.perf_counter() - t)
    assert report.accounted_rows == report.input_rows
print(json.dumps({"first_s": times[0], "reload_s": times[1],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_once(dataset: str, path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="recsys-bench-load-") as home:
        env = {**os.environ, "RECSYS_HOME": home}
        env.pop("RECSYS_DATABASE_URL", None)
        # start the embedded server first so its start-up is not timed
        subprocess.run([sys.executable, "-c", "from recsys.ingest.db import database_url; database_url()"],
                       env=env, check=True)
        out = subprocess.run([sys.executable, "-c", CHILD, dataset, str(path)], env=env, check=True,
                             capture_output=True, text=True).stdout
        subprocess.run([sys.executable, "-m", "recsys.app.cli", "db", "stop"], env=env, check=False,
                       capture_output=True)
        return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(PATHS), default="tafeng")
    parser.add_argument("--path", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.path or PATHS[args.dataset]
    runs = [run_once(args.dataset, path) for _ in range(args.repeat)]
    first = statistics.median(r["first_s"] for r in runs)
    print(json.dumps({
        "bench": "load", "dataset": args.dataset, "rows": ROWS[args.dataset], "runs": args.repeat,
        "first_load_s": round(first, 2),
        "reload_s": round(statistics.median(r["reload_s"] for r in runs), 2),
        "rows_per_s": round(ROWS[args.dataset] / first),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs)),
        "target_s": 30, "meets_target": first < 30,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
