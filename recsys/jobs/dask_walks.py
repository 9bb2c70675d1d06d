"""Random-walk chunks on a Dask cluster: the `run_chunks` of `recsys.data.walks.iter_walks`.

Walk generation is the training's data stage: every round, a seeded shuffle
of the start nodes is cut into chunks of CHUNK_WALKS walkers, and each chunk's
walks are a pure function of the graph's arrays, its start nodes and its
generator key (`walk_chunk`). Here each chunk is one Dask task: the graph's
arrays are scattered to every worker once per graph (broadcast), the tasks
carry only their start nodes and key, and the walks come back in chunk order,
so they are the very walks one process makes for the same seed, whatever the
number of workers. The trainer consumes a round while the cluster walks it.

Inside a task that itself runs on a Dask worker (a flow on Prefect's
DaskTaskRunner), the runner leaves the worker's thread pool while it waits
(`secede`), so the worker keeps running chunks.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from recsys.data.walks import WalkArrays, walk_chunk


# distributed is imported where it is used: a run without Dask does not pay its import (0.8 s)
def _in_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
        return True
    except ValueError:
        return False


class DaskChunkRunner:
    """Runs walk chunks as tasks of the Dask scheduler at `address` (or of the worker's own client)."""

    def __init__(self, address: str | None = None, client=None):
        if address is None and client is None:
            raise ValueError("DaskChunkRunner needs a scheduler address or a distributed.Client")
        self.address = address or client.scheduler.address
        self._client = client
        self._scattered: tuple[int, object] | None = None  # (id of the arrays, their future): one graph at a time
        self.chunks_run = 0

    def client(self):
        from distributed import Client, get_client, secede

        if self._client is None:
            if _in_worker():
                secede()  # this task waits on others: give the worker its thread back
                self._client = get_client()
            else:
                self._client = Client(self.address, set_as_default=False)
        return self._client

    def __call__(self, arrays: WalkArrays, chunks: list[tuple[np.ndarray, tuple[int, int, int]]],
                 walk_length: int) -> Iterator[np.ndarray]:
        client = self.client()
        if self._scattered is None or self._scattered[0] != id(arrays):
            self._scattered = (id(arrays), client.scatter(arrays, broadcast=True, hash=False))
        shipped = self._scattered[1]
        futures = [client.submit(walk_chunk, shipped, starts, walk_length, key, pure=False) for starts, key in chunks]
        for future in futures:
            walks = future.result()
            self.chunks_run += 1
            yield walks
            future.release()

    def __getstate__(self):  # sent to a worker with a task: reconnects there
        return {"address": self.address}

    def __setstate__(self, state):
        self.__init__(state["address"])
