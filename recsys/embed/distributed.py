"""Data-parallel EGES training with torch.distributed: N processes, each on its share of the walks.

Every rank builds the same model (same seed, same initial tables), takes the
walk chunks whose (round + chunk) falls to it (`DataParallel.own_chunks`;
with a Dask runner the chunks are walked on the cluster), and trains on them
with the fused CPU kernel. `SUMS_PER_EPOCH` times an epoch, at the same
shares of every rank's walks, the ranks sum their updates:
each rank's change of every table since the last sum (embeddings, context
vectors, attention logits and their Adagrad accumulators) is all-reduced
(gloo on CPUs; NCCL has no use here: the kernel is a CPU one) and added to
the common starting point, so a row one rank moved keeps its whole move and a
row both moved gets both. Between sums ranks do not see each other's updates
(model averaging's trade-off: a dense exchange of the tables, about 4 x (2 x
items + side rows) x dim bytes, `SUMS_PER_EPOCH` times an epoch, against a
sparse exchange every batch; docs/scaling.md).

`train_data_parallel` starts the ranks on this machine (torch.multiprocessing,
a free loopback port) and returns rank 0's model; a rank that dies ends the
training with an error naming it (the other ranks are stopped), so nothing
half-trained is published.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pickle
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.data.walks import round_chunks, serial_chunks
from recsys.embed.train import train_embeddings

RANK_TIMEOUT = dt.timedelta(seconds=300)  # a rank that stops answering fails the others' all-reduce
# sums of the ranks' updates per epoch: once an epoch, 2 ranks lost 6% of Ta-Feng's warm Recall@20 (each
# rank trained a whole epoch without the other's updates); 16 was the one other value tried (Ta-Feng only)
SUMS_PER_EPOCH = 16


class DataParallel:
    """This process's rank: its share of the walk chunks, and the epoch-end sum of the ranks' updates."""

    def __init__(self, rank: int, world_size: int, sums_per_epoch: int = SUMS_PER_EPOCH):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank, self.world_size, self.sums_per_epoch = rank, world_size, int(sums_per_epoch)
        self.base: list[np.ndarray] = []
        self.sums = 0
        self.bytes_per_sum = 0

    def owns(self, key: tuple[int, int, int]) -> bool:
        return (key[1] + key[2]) % self.world_size == self.rank

    def own_walks(self, n_starts: int, rounds: int) -> int:
        """Walks this rank trains on per epoch (its chunks' sizes; every rank can work out every share)."""
        return sum(len(starts) for rnd in range(rounds)
                   for starts, key in round_chunks(np.arange(n_starts), 0, rnd) if self.owns(key))

    def own_chunks(self, inner=None):
        """run_chunks over this rank's chunks only (the others' are walked by them)."""
        inner = inner or serial_chunks

        def run(arrays, chunks, walk_length):
            mine = [(starts, key) for starts, key in chunks if self.owns(key)]
            return inner(arrays, mine, walk_length)
        return run

    def start(self, arrays: list[np.ndarray]) -> None:
        self.base = [a.copy() for a in arrays]
        self.bytes_per_sum = int(sum(a.nbytes for a in arrays))

    def sum_updates(self, arrays: list[np.ndarray]) -> None:
        for current, base in zip(arrays, self.base):
            delta = torch.from_numpy(current - base)
            dist.all_reduce(delta, op=dist.ReduceOp.SUM)
            np.add(base, delta.numpy(), out=current)
            base[...] = current
        self.sums += 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, ds, graph, config, run_chunks, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=RANK_TIMEOUT)
    try:
        parallel = DataParallel(rank, world_size)
        trained = train_embeddings(ds, graph, config, progress=False, run_chunks=run_chunks, data_parallel=parallel)
        # walk chunks the ranks ran on a Dask cluster (each rank holds its own copy of the runner)
        chunks = torch.tensor([getattr(run_chunks, "chunks_run", 0)], dtype=torch.int64)
        dist.all_reduce(chunks, op=dist.ReduceOp.SUM)
        trained.stats.update(train_processes=world_size, update_sums=parallel.sums,
                             bytes_per_sum=parallel.bytes_per_sum, walk_chunks_by_ranks=int(chunks.item()))
        if rank == 0:
            with open(Path(out) / "rank0.pkl", "wb") as handle:  # between our own processes, not a bundle
                pickle.dump(trained, handle)
    finally:
        dist.destroy_process_group()


def train_data_parallel(ds, graph, config, processes: int, run_chunks=None):
    """Train on `processes` ranks on this machine; returns the (common) model."""
    if processes < 2:
        raise ValueError(f"data-parallel training needs >= 2 processes, got {processes}")
    if not config.num_threads:  # the machine's cores shared between the ranks
        config = dataclasses.replace(config, num_threads=max(1, (os.cpu_count() or 1) // processes))
    with tempfile.TemporaryDirectory(prefix="recsys-ranks-") as out:
        try:
            mp.spawn(_rank, args=(processes, _free_port(), ds, graph, config, run_chunks, out), nprocs=processes,
                     join=True)
        except mp.ProcessRaisedException as exc:
            raise RuntimeError(f"data-parallel training failed: rank {exc.error_index} raised: "
                               f"{str(exc).strip().splitlines()[-1]}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"data-parallel training failed: rank {exc.error_index} died "
                               f"(exit code {exc.exit_code}); the other ranks were stopped") from None
        with open(Path(out) / "rank0.pkl", "rb") as handle:
            trained = pickle.load(handle)
    if hasattr(run_chunks, "chunks_run"):  # the driver's runner counts the ranks' chunks too
        run_chunks.chunks_run += trained.stats["walk_chunks_by_ranks"]
    return trained
