"""Run every benchmark in turn (`make bench`); collect their JSON lines in docs/benchmarks-latest.jsonl.

Each script runs in its own process, one after another (they would skew each
other's timings if run together), under `nice` when --nice is given. A script
that fails or prints no JSON line is recorded with its exit code and the end
of its stderr, and the others still run.

    python bench/run_all.py [--only walks,train] [--skip end_to_end] [--out FILE] [--nice 10]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# name -> script and its arguments (the defaults each script documents)
SCRIPTS = {
    "load": ["bench_load.py"],
    "walks": ["bench_walks.py"],
    "train": ["bench_train.py"],
    "index_tafeng_size": ["bench_index.py", "--n-items", "24000", "--threads", "1"],
    "index_100k": ["bench_index.py", "--n-items", "100000", "--threads", "1"],
    "index_1m": ["bench_index.py", "--n-items", "1000000", "--threads", "1"],
    "end_to_end": ["bench_end_to_end.py"],
    "end_to_end_1m": ["bench_end_to_end.py", "--size", "1m"],
}


def run_one(name: str, nice: int | None) -> dict:
    script, *script_args = SCRIPTS[name]
    cmd = [sys.executable, str(BENCH / script), *script_args]
    if nice is not None:
        cmd = ["nice", "-n", str(nice), *cmd]
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # stderr passes through, so progress shows while a long benchmark runs
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    wall = round(time.perf_counter() - started, 1)
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"bench": name, "error": f"exit code {proc.returncode}", "stdout_tail": proc.stdout[-500:],
                "wall_s": wall}
    record = json.loads(lines[-1])
    record.setdefault("wall_s", wall)
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks-latest.jsonl")
    parser.add_argument("--nice", type=int, default=None, help="run each script under nice -n N")
    args = parser.parse_args()
    names = [n for n in (args.only.split(",") if args.only else SCRIPTS) if n]
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in SCRIPTS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(SCRIPTS)}")
    names = [n for n in names if n not in set(args.skip.split(","))]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    failed = 0
    with args.out.open("w") as out:
        for name in names:
            record = run_one(name, args.nice)
            failed += "error" in record
            line = json.dumps(record)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
