"""HTTP benchmark and bounded load test of `recsys serve` on loopback.

Starts `recsys serve` on a free port over the production version of the
configured database, then

1. one client, one request at a time: `--single N` GETs of
   /v1/items/{id}/similar and `--batches N` POSTs of /v1/similar:batch
   (`--batch-size` ids): p50/p99 latency without queueing;
2. the load: `--clients` threads (each its own keep-alive httpx client) for
   `--seconds` seconds, a share `--batch-share` of the requests batches, the
   rest single GETs, while the production alias moves `--moves` times between
   the production version and a second version (evenly spread over the run);
   then the alias is put back. Every non-200 answer or transport error counts
   as an error (must be 0).

It stops by itself: at the deadline, or after `--max-requests` per client.
Needs two servable versions: when the registry has only one, a copy of the
production bundle is published under a new version name (`--no-twin` to
refuse). Prints one JSON line (machine, date, command, numbers).

    python bench/bench_http.py [--clients 8] [--seconds 30] [--moves 5] [--database-url URL]

`run_load` and `ServerProcess` are also what tests/test_http.py runs (shorter).
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, load_average, log, machine  # noqa: E402

import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`recsys serve` in a child process on a free loopback port; stopped (by its pid) on exit."""

    def __init__(self, *args: str, env: dict | None = None, startup_timeout_s: float = 90.0,
                 wait_ready: bool = True, log_path: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["serve", "--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s, self.wait_ready = startup_timeout_s, wait_ready
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServerProcess":
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "recsys.app.cli", *self.args], env=self.env,
                                     cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        path = "/readyz" if self.wait_ready else "/healthz"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recsys serve exited with {self.proc.returncode}"
                                   + (f"; log: {self.log_path.read_text()[-2000:]}" if self.log_path else ""))
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"recsys serve did not answer {path} within {self.startup_timeout_s} s")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def _ms(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": _r(percentile(values, 50)), "p99_ms": _r(percentile(values, 99)),
            "max_ms": _r(max(values) if values else None)}


def _r(seconds):
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class LoadResult:
    seconds: float
    latencies: dict = field(default_factory=lambda: {"single": [], "batch": []})
    errors: list = field(default_factory=list)
    versions: set = field(default_factory=set)
    moves: list = field(default_factory=list)  # (seconds into the run, version moved to)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + len(self.errors)

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 2), "requests": self.requests,
                "requests_per_s": round(self.requests / self.seconds, 1) if self.seconds else None,
                "errors": len(self.errors), "error_examples": [str(e)[:300] for e in self.errors[:3]],
                "single": _ms(self.latencies["single"]), "batch": _ms(self.latencies["batch"]),
                "alias_moves": len(self.moves), "versions_answered": sorted(self.versions)}


def run_load(url: str, item_ids: list[str], *, clients: int = 8, seconds: float = 30.0, moves: int = 0,
             move=None, batch_share: float = 0.1, batch_size: int = 100, k: int = 10, headers: dict | None = None,
             max_requests: int = 1_000_000, seed: int = 0) -> LoadResult:
    """`clients` threads of requests for `seconds` (or `max_requests` each); `move(i)` is called
    `moves` times, evenly spread, from another thread."""
    result = LoadResult(seconds=0.0)
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        local = {"single": [], "batch": []}
        errors, versions = [], set()
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for _ in range(max_requests):
                if time.perf_counter() >= deadline:
                    break
                batch = rng.random() < batch_share
                t0 = time.perf_counter()
                try:
                    if batch:
                        ids = rng.sample(item_ids, min(batch_size, len(item_ids)))
                        response = http.post("/v1/similar:batch", json={"item_ids": ids, "k": k})
                    else:
                        response = http.get(f"/v1/items/{rng.choice(item_ids)}/similar", params={"k": k})
                    elapsed = time.perf_counter() - t0
                    if response.status_code != 200:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    versions.add(response.json()["version"])
                    local["batch" if batch else "single"].append(elapsed)
                except Exception as exc:  # noqa: BLE001 - a transport error is an error of the run
                    errors.append(repr(exc))
        with lock:
            for kind, values in local.items():
                result.latencies[kind].extend(values)
            result.errors.extend(errors)
            result.versions |= versions

    def mover() -> None:
        for i in range(moves):
            at = start + seconds * (i + 1) / (moves + 1)
            while time.perf_counter() < at:
                time.sleep(0.01)
            version = move(i)
            result.moves.append((round(time.perf_counter() - start, 2), version))

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    if moves and move is not None:
        threads.append(threading.Thread(target=mover, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    result.seconds = time.perf_counter() - start
    return result


def sequential(url: str, item_ids: list[str], singles: int, batches: int, batch_size: int, k: int,
               headers: dict | None = None, seed: int = 1) -> dict:
    """One client, one request at a time: latency without queueing."""
    rng = random.Random(seed)
    times = {"single": [], "batch": []}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for kind, n in (("single", singles), ("batch", batches)):
            for _ in range(n):
                t0 = time.perf_counter()
                if kind == "batch":
                    r = http.post("/v1/similar:batch", json={"item_ids": rng.sample(item_ids, batch_size), "k": k})
                else:
                    r = http.get(f"/v1/items/{rng.choice(item_ids)}/similar", params={"k": k})
                times[kind].append(time.perf_counter() - t0)
                r.raise_for_status()
    return {kind: _ms(values) for kind, values in times.items()}


# --------------------------------------------------------------------------- the benchmark
def _second_version(engine, production, allow_twin: bool) -> str:
    """Another servable version to move the alias to (a copy of production's bundle if none)."""
    from recsys.config import get_settings
    from recsys.serving.bundle import open_bundle
    from recsys.serving.registry import list_versions, publish
    from recsys.serving.store import new_version_name

    for info in reversed(list_versions(engine)):
        if info.version != production.version and info.status == "published" and Path(info.path).exists():
            return info.version
    if not allow_twin:
        raise SystemExit("The registry has one servable version; the alias moves need two (drop --no-twin).")
    log(f"publishing a copy of {production.version} to move the alias between two versions")
    parts = open_bundle(production.path).parts
    return publish(engine, get_settings().resolved_artifact_root, parts,
                   new_version_name(f"bench-twin {production.version}".encode()), alias=None,
                   reason="bench_http twin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("RECSYS_DATABASE_URL"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--batch-share", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--single", type=int, default=2000, help="sequential single GETs")
    parser.add_argument("--batches", type=int, default=200, help="sequential batch POSTs")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--refresh-interval", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="per client")
    parser.add_argument("--no-twin", action="store_true")
    args = parser.parse_args()

    from recsys.config import get_settings
    from recsys.ingest.db import database_url, get_engine
    from recsys.serving.bundle import open_bundle
    from recsys.serving.registry import get_alias, get_version, move_alias

    url = database_url(get_settings(database_url=args.database_url))
    engine = get_engine(url=url)
    production = get_alias(engine, "production")
    if production is None:
        raise SystemExit("No production version: run `recsys train` first.")
    other = _second_version(engine, production, not args.no_twin)
    items = open_bundle(production.path, verify=False).parts.items
    warm = [i for i, row in zip(items.item_ids.tolist(), items.index_row.tolist()) if row >= 0]
    other_ids = set(open_bundle(get_version(engine, other).path, verify=False).parts.items.item_ids.tolist())
    item_ids = [i for i in warm if i in other_ids]
    log(f"{len(item_ids):,} warm items in both {production.version} and {other}")
    load_before = load_average()

    server_log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_http_server.log"
    with ServerProcess("--refresh-interval", str(args.refresh_interval), "--workers", str(args.workers),
                       env={"RECSYS_DATABASE_URL": url}, log_path=server_log) as server:
        log(f"server up at {server.url}; warm-up")
        sequential(server.url, item_ids, 200, 10, args.batch_size, args.k)
        log(f"sequential: {args.single} single, {args.batches} batch requests")
        single_client = sequential(server.url, item_ids, args.single, args.batches, args.batch_size, args.k)
        targets = [other, production.version]

        def move(i: int) -> str:
            version = targets[i % 2]
            move_alias(engine, "production", version, f"bench_http move {i}")
            log(f"alias production -> {version}")
            return version

        log(f"load: {args.clients} clients for {args.seconds} s, {args.moves} alias moves")
        try:
            result = run_load(server.url, item_ids, clients=args.clients, seconds=args.seconds, moves=args.moves,
                              move=move, batch_share=args.batch_share, batch_size=args.batch_size, k=args.k,
                              max_requests=args.max_requests)
        finally:
            if get_alias(engine, "production").version != production.version:
                move_alias(engine, "production", production.version, "bench_http: back")
        ready_after = httpx.get(server.url + "/readyz").status_code
    emit({**machine(), "command": "python bench/bench_http.py " + " ".join(sys.argv[1:]),
          "versions": [production.version, other], "n_items": len(items.item_ids), "query_items": len(item_ids),
          "workers": args.workers, "k": args.k, "batch_size": args.batch_size,
          "single_client": single_client, "load": {"clients": args.clients, **result.summary(),
                                                   "moves_at_s": result.moves},
          "readyz_after": ready_after, "load_average_before": load_before, "load_average_after": load_average()})


if __name__ == "__main__":
    main()
