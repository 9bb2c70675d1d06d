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

On several machines the ranks are started by torchrun, this module being its
entry point (`main`). The flow's machine runs `train_on_torchrun`: it writes
the training job (data, item graph, config, where walks run) to a file and
starts `torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m recsys.embed.distributed --job FILE --out DIR`;
every other machine starts the same torchrun command without `--job`:

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \
        --rdzv-endpoint 10.0.0.5:29400 --rdzv-id recsys-train -m recsys.embed.distributed

The ranks meet at the rendezvous, the rank holding the job sends it to the
others (torch.distributed's broadcast, over gloo), all train, and the job's
rank writes the model back. A rank that fails makes torchrun exit non-zero
on every node: the flow raises, nothing is published.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import pickle
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recsys.data.walks import round_chunks, serial_chunks
from recsys.embed.train import train_embeddings

# a rank that stops answering fails the others' collectives after this long (RECSYS_RANK_TIMEOUT_S overrides)
RANK_TIMEOUT = dt.timedelta(seconds=float(os.environ.get("RECSYS_RANK_TIMEOUT_S", 300)))
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


def _train_as_rank(rank: int, world_size: int, ds, graph, config, run_chunks):
    """This rank's share of the training, in an initialised process group; every rank ends with the model."""
    parallel = DataParallel(rank, world_size)
    trained = train_embeddings(ds, graph, config, progress=False, run_chunks=run_chunks, data_parallel=parallel)
    # walk chunks the ranks ran on a Dask cluster (each rank holds its own copy of the runner)
    chunks = torch.tensor([getattr(run_chunks, "chunks_run", 0)], dtype=torch.int64)
    dist.all_reduce(chunks, op=dist.ReduceOp.SUM)
    trained.stats.update(train_processes=world_size, update_sums=parallel.sums,
                         bytes_per_sum=parallel.bytes_per_sum, walk_chunks_by_ranks=int(chunks.item()))
    return trained


def _rank(rank: int, world_size: int, port: int, ds, graph, config, run_chunks, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=RANK_TIMEOUT)
    try:
        trained = _train_as_rank(rank, world_size, ds, graph, config, run_chunks)
        if rank == 0:
            with open(Path(out) / "rank0.pkl", "wb") as handle:  # between our own processes, not a bundle
                pickle.dump(trained, handle)
    finally:
        dist.destroy_process_group()


def _with_driver_chunks(trained, run_chunks):
    if hasattr(run_chunks, "chunks_run"):  # the driver's runner counts the ranks' chunks too
        run_chunks.chunks_run += trained.stats["walk_chunks_by_ranks"]
    return trained


def _threads_per_rank(config, processes: int):
    if config.num_threads:
        return config
    # the machine's cores shared between its ranks
    return dataclasses.replace(config, num_threads=max(1, (os.cpu_count() or 1) // processes))


def train_data_parallel(ds, graph, config, processes: int, run_chunks=None):
    """Train on `processes` ranks on this machine; returns the (common) model."""
    if processes < 2:
        raise ValueError(f"data-parallel training needs >= 2 processes, got {processes}")
    config = _threads_per_rank(config, processes)
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
    return _with_driver_chunks(trained, run_chunks)


# --------------------------------------------------------------------------- several machines (torchrun)

@dataclass(frozen=True)
class Rendezvous:
    """Where the training ranks of several machines meet: torchrun's c10d rendezvous."""

    endpoint: str  # HOST:PORT every machine reaches (the rendezvous is hosted by the machine at HOST)
    nodes: int  # machines taking part, the flow's included
    run_id: str = "recsys-train"  # the same on every machine
    join_timeout_s: int = 600  # how long the ranks wait for every machine to join

    def validate(self) -> None:
        host, _, port = self.endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"the rendezvous endpoint must be HOST:PORT, got {self.endpoint!r}")
        if self.nodes < 1:
            raise ValueError(f"a rendezvous needs >= 1 nodes, got {self.nodes}")

    def torchrun_args(self, processes: int) -> list[str]:
        """The torchrun options of every machine's command (the others add nothing but their own
        --nproc-per-node)."""
        return [f"--nnodes={self.nodes}", f"--nproc-per-node={processes}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={self.endpoint}", f"--rdzv-id={self.run_id}", "--max-restarts=0",
                f"--rdzv-conf=join_timeout={self.join_timeout_s}"]


def train_on_torchrun(ds, graph, config, processes: int, rendezvous: Rendezvous, run_chunks=None):
    """Train with `processes` ranks here and the ranks other machines start (torchrun, module docstring)."""
    rendezvous.validate()
    config = _threads_per_rank(config, processes)
    with tempfile.TemporaryDirectory(prefix="recsys-torchrun-") as work:
        job = Path(work) / "job.pkl"
        with open(job, "wb") as handle:  # read by this machine's ranks only (the others get it over gloo)
            pickle.dump((ds, graph, config, run_chunks), handle)
        command = [sys.executable, "-m", "torch.distributed.run", *rendezvous.torchrun_args(processes),
                   "-m", "recsys.embed.distributed", "--job", str(job), "--out", work]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = [line for line in (done.stderr or "").strip().splitlines() if line.strip()][-6:]
            raise RuntimeError(f"data-parallel training on torchrun failed (exit code {done.returncode}; "
                               f"rendezvous {rendezvous.endpoint}, {rendezvous.nodes} nodes): " + " | ".join(tail))
        with open(Path(work) / "trained.pkl", "rb") as handle:
            trained = pickle.load(handle)
    trained.stats["train_nodes"] = rendezvous.nodes
    return _with_driver_chunks(trained, run_chunks)


def main(argv: list[str] | None = None) -> None:
    """A torchrun rank: `python -m torch.distributed.run ... -m recsys.embed.distributed [--job F --out D]`."""
    parser = argparse.ArgumentParser(prog="python -m recsys.embed.distributed", description=main.__doc__)
    parser.add_argument("--job", help="the training job (on the flow's machine; the others receive it)")
    parser.add_argument("--out", help="where the job's rank writes the trained model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=RANK_TIMEOUT)  # env://: RANK, WORLD_SIZE, MASTER_* from torchrun
    try:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        holds = [None] * world_size
        dist.all_gather_object(holds, bool(args.job))
        if not any(holds):
            raise SystemExit("no rank was given the training job (--job): start the flow's `recsys train "
                             "--train-nodes ...` on one machine and this command on the others")
        holder = holds.index(True)  # the first rank of the flow's machine sends the job to every other
        job = [None]
        if rank == holder:
            with open(args.job, "rb") as handle:
                job = [pickle.load(handle)]
        dist.broadcast_object_list(job, src=holder)
        ds, graph, config, run_chunks = job[0]
        trained = _train_as_rank(rank, world_size, ds, graph, config, run_chunks)
        if rank == holder:
            with open(Path(args.out) / "trained.pkl", "wb") as handle:
                pickle.dump(trained, handle)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
