"""How a run executes: on this machine, or with its heavy stages on a Dask cluster (local or existing).

`dask_runner(execution)` yields the `run_chunks` the final training walks
with (None: in this process), the record every published version carries as
`execution` in its manifest, and `settle` (fills the record in before the
manifest is written). On a cluster the flow runs the evaluation's row groups
as Prefect tasks on Prefect's DaskTaskRunner (flows/train_and_publish.py),
and walk chunks (recsys/jobs/dask_walks.py), query chunks
(recsys/jobs/dask_queries.py) and index shards (recsys/jobs/dask_index.py)
as Dask tasks of the same cluster. The record: {"task_runner", "dask_address",
"dask_workers", "evaluation_tasks", "walk_chunks_on_dask",
"query_chunks_on_dask", "index_shards_on_dask", "worker_peak_rss_mb",
"train_processes", "train_nodes"}. A local cluster (`dask_workers=N`) is
started for the run and closed after it; an existing scheduler
(`dask_address`, or RECSYS_DASK_ADDRESS) is only connected to. How a version
was made does not change what it is: the walks, and so the model, are the
same on any number of workers.
"""
from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from typing import Callable, Iterator

from recsys.errors import UserError
from recsys.jobs.dask_walks import DaskChunkRunner

ADDRESS_ENV = "RECSYS_DASK_ADDRESS"


@dataclass(frozen=True)
class Execution:
    dask_address: str | None = None  # an existing scheduler, e.g. "tcp://10.0.0.5:8786"
    dask_workers: int = 0  # start a local cluster of this many worker processes for the run (0: none)

    @classmethod
    def resolve(cls, dask_address: str | None = None, dask_workers: int | None = 0) -> "Execution":
        """From the command line; the address falls back to RECSYS_DASK_ADDRESS when no local cluster is asked."""
        dask_workers = int(dask_workers or 0)
        if dask_workers < 0:
            raise UserError(f"--dask-workers must be >= 0, got {dask_workers}")
        if dask_address and dask_workers:
            raise UserError("Give either --dask ADDRESS (an existing Dask scheduler) or --dask-workers N "
                            "(a local cluster for this run), not both.")
        if not dask_address and not dask_workers:
            dask_address = os.environ.get(ADDRESS_ENV) or None
        return cls(dask_address, dask_workers)

    @property
    def uses_dask(self) -> bool:
        return bool(self.dask_address or self.dask_workers)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextlib.contextmanager
def dask_runner(execution: Execution, log=print) -> Iterator[tuple[DaskChunkRunner | None, dict, Callable[[], None]]]:
    """(run_chunks for the walks, the execution record, settle: fills in the record's chunk count and the
    workers' peak memory as of now; called when the block ends if it was not before)."""
    record = {"task_runner": "local", "dask_address": None, "dask_workers": 0, "walk_chunks_on_dask": 0,
              "query_chunks_on_dask": 0, "index_shards_on_dask": 0, "evaluation_tasks": [],
              "worker_peak_rss_mb": {}, "train_processes": 1, "train_nodes": 1}
    if not execution.uses_dask:
        yield None, record, lambda: None
        return
    from distributed import Client, LocalCluster  # only runs that use Dask pay its import

    with contextlib.ExitStack() as stack:
        if execution.dask_workers:
            import dask

            # not daemon processes: a worker's evaluation task may start training ranks (torch.multiprocessing)
            with dask.config.set({"distributed.worker.daemon": False}):
                cluster = stack.enter_context(LocalCluster(n_workers=execution.dask_workers, threads_per_worker=1,
                                                           processes=True, dashboard_address=None, silence_logs=40))
            address, where = cluster.scheduler_address, "local cluster"
        else:
            address, where = execution.dask_address, execution.dask_address
        try:
            client = stack.enter_context(Client(address, set_as_default=False, timeout="30s"))
        except OSError as exc:
            raise UserError(f"Cannot reach the Dask scheduler at {address} ({exc}). Start one "
                            f"(`dask scheduler`, then `dask worker {address}`) or drop --dask.") from None
        workers = client.scheduler_info()["workers"]
        if not workers:
            raise UserError(f"The Dask scheduler at {address} has no workers: start some with "
                            f"`dask worker {address}`.")
        log(f"on Dask ({where}, {len(workers)} workers): the evaluation's row groups as Prefect tasks "
            "(DaskTaskRunner), walk, query and index-shard chunks as Dask tasks")
        runner = DaskChunkRunner(client=client)
        record.update(task_runner="prefect-dask", dask_address=where, dask_workers=len(workers))

        settled = []

        def settle() -> None:
            settled.append(True)
            record["walk_chunks_on_dask"] = runner.chunks_run
            with contextlib.suppress(Exception):  # a worker lost at the very end must not hide the run's result
                peaks = client.run(peak_rss_mb)
                record["worker_peak_rss_mb"] = {str(i): mb for i, mb in enumerate(peaks[w] for w in sorted(peaks))}

        try:
            yield runner, record, settle
        finally:
            if not settled:  # else the record stays as the manifest has it
                settle()
            log(f"Dask workers' peak memory (MB): {record['worker_peak_rss_mb']}")
