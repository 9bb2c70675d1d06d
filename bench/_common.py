"""Helpers shared by the benchmark scripts: machine facts, data paths, one JSON line out.

Benchmarks are not tests: each script prints one JSON line with what it measured
and the conditions it measured them under (load average before and after, since
the benchmark machine may be shared).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
TAFENG_PATH = DATA / "tafeng" / "ta_feng.csv.zip"
PECANPY_PYTHON = REPO / ".venv-pecanpy" / "bin" / "python"
PECANPY_SETUP = "python3 -m venv .venv-pecanpy && .venv-pecanpy/bin/pip install pecanpy==2.0.9"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    return [round(x, 2) for x in os.getloadavg()]


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    return {"machine": f"{platform.machine()} {os.cpu_count()} cores {memory_gib()} GiB",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def median(values) -> float:
    return float(statistics.median(values))


def emit(record: dict, out: Path | None = None) -> None:
    """The script's output line (also appended to `out` when given: scripts that print one line per cell)."""
    text = json.dumps(record, default=_json_default)
    print(text, flush=True)
    if out:
        with open(out, "a") as handle:
            handle.write(text + "\n")


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def tafeng_dataset(path: Path | str = TAFENG_PATH):
    """Full Ta-Feng as a `Dataset` (the `recsys load --dataset tafeng` heuristics)."""
    from recsys.ingest.loaders.tafeng import read_frames

    if not Path(path).exists():
        raise SystemExit(f"Ta-Feng not found at {path}: pass --tafeng PATH")
    return read_frames(path).to_dataset()


def tafeng_graph(ds, session_gap_s: int = 3600):
    """The item graph the training flow builds (default GraphConfig)."""
    from recsys.data.graph import build_item_graph
    from recsys.data.sessions import make_baskets

    return build_item_graph(ds, make_baskets(ds, session_gap_s))


def log(msg: str) -> None:
    """Progress on stderr, so stdout stays one JSON line."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
