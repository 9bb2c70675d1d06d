"""Weighted random walks over an `ItemGraph` (DeepWalk with edge weights).

A walker at node v moves to neighbour u with probability w(v,u) / sum_u' w(v,u').
Sampling uses per-node alias tables (Walker/Vose), built for all nodes at
once with prefix sums, so one step for a whole batch of walkers is a handful
of numpy gathers: O(1) per step, no per-node Python.

Determinism: walkers are cut into fixed chunks of `CHUNK_WALKS`, each with
its own generator seeded by (seed, round, chunk), so the walks depend only
on the seed and the start nodes, never on `batch_size`, nor on where the
chunks run (`walk_chunk` is a pure function: the unit a Dask task runs). Each round starts
one walk from every node with an edge, in a fresh seeded shuffle (as
DeepWalk does); `walks_per_node` rounds in all. Memory stays at one chunk
plus one batch whatever the number of walks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from recsys.data.graph import ItemGraph

CHUNK_WALKS = 1 << 15  # walkers advanced together; fixed so results never depend on batch_size
DEFAULT_BATCH_SIZE = 1 << 16
_ONE = 1 << 30  # fixed-point unit of the alias tables: probabilities exact to ~1e-9


@dataclass
class AliasTable:
    """Per-edge alias table aligned with the graph's CSR edges.

    From node v pick a slot j uniformly in v's edge range; keep edge j with
    probability `prob[j]`, else take edge `alias[j]` (a global edge index
    inside the same range).
    """

    prob: np.ndarray  # float64, (n_edges,)
    alias: np.ndarray  # int64, (n_edges,)


def build_alias_table(graph: ItemGraph) -> AliasTable:
    """Vose's alias tables for every node at once.

    The sequential sweep (lights in edge order take their missing mass from
    the current heavy; a heavy whose remainder drops below 1 becomes a light
    filled by the next heavy) has a closed form in prefix sums: with P the
    running sum of light deficits (1 - w) and X the running sum of heavy
    excesses (w - 1), both with weights scaled to mean 1 per node, light i is
    filled by the first heavy j with X_j >= P_(i-1), and heavy j turns light
    after the first light i with P_i > X_j, keeping 1 + X_j - P_i. Because
    deficits and excesses cancel within every node, global prefix sums line
    up at node boundaries and a single searchsorted serves all nodes. Sums
    are done in 2^-30 fixed point so they are exact.
    """
    indptr = graph.indptr.astype(np.int64)
    deg = np.diff(indptr)
    n_nodes, n_edges = len(deg), len(graph.weights)
    prob = np.ones(n_edges, dtype=np.float64)
    alias = np.arange(n_edges, dtype=np.int64)
    if n_edges == 0:
        return AliasTable(prob, alias)
    node = np.repeat(np.arange(n_nodes, dtype=np.int64), deg)
    starts = indptr[:-1][deg > 0]
    strength = np.add.reduceat(graph.weights.astype(np.float64), starts)
    # Fixed point with exact integer sums: every node's weights, scaled to
    # mean ONE, add up to exactly deg * ONE (the rounding residue goes to its
    # largest edge), so deficits and excesses cancel exactly per node and the
    # global prefix sums below never drift.
    scale = np.zeros(n_nodes)
    scale[deg > 0] = deg[deg > 0] * float(_ONE) / strength
    q = np.rint(graph.weights * scale[node]).astype(np.int64)
    node_max = np.zeros(n_nodes, dtype=np.int64)
    node_max[deg > 0] = np.maximum.reduceat(q, starts)
    at_max = np.flatnonzero(q == node_max[node])
    first_max = at_max[np.r_[True, node[at_max][1:] != node[at_max][:-1]]]
    q[first_max] += deg[deg > 0] * _ONE - np.add.reduceat(q, starts)
    if np.any(q < 0):
        raise ValueError("alias table: edge weights must be finite and > 0")

    heavy = q >= _ONE  # the mean is exactly ONE, so every node has one
    light_idx = np.flatnonzero(~heavy)
    if len(light_idx) == 0:
        return AliasTable(prob, alias)
    heavy_idx = np.flatnonzero(heavy)
    light_deficit = _ONE - q[light_idx]
    deficit_incl = np.cumsum(light_deficit)  # P_i
    deficit_excl = deficit_incl - light_deficit  # P_(i-1)
    excess_incl = np.cumsum(q[heavy_idx] - _ONE)  # X_j

    # Each node's heavies (and lights) are one contiguous run. The prefix sums
    # of neighbouring nodes meet exactly at the boundary, so a search can land
    # on the previous node's last heavy: clamp into the node's run.
    heavies_per_node = np.bincount(node[heavy_idx], minlength=n_nodes)
    heavy_stop = np.cumsum(heavies_per_node)  # exclusive end in heavy_idx
    heavy_start = heavy_stop - heavies_per_node
    light_node = node[light_idx]
    j = np.searchsorted(excess_incl, deficit_excl, side="left")
    np.maximum(j, heavy_start[light_node], out=j)
    prob[light_idx] = q[light_idx] / _ONE
    alias[light_idx] = heavy_idx[j]

    light_stop = np.cumsum(np.bincount(light_node, minlength=n_nodes))  # exclusive end in light_idx
    heavy_node = node[heavy_idx]
    i = np.searchsorted(deficit_incl, excess_incl, side="right")
    pos = np.arange(len(heavy_idx))
    turns_light = (i < light_stop[heavy_node]) & (pos < heavy_stop[heavy_node] - 1)
    k = pos[turns_light]
    prob[heavy_idx[k]] = (_ONE + excess_incl[k] - deficit_incl[i[turns_light]]) / _ONE
    alias[heavy_idx[k]] = heavy_idx[k + 1]
    return AliasTable(prob, alias)


def _check_args(walk_length: int, walks_per_node: int, batch_size: int) -> None:
    if walk_length < 1:
        raise ValueError(f"walk_length must be >= 1, got {walk_length}")
    if walks_per_node < 0:
        raise ValueError(f"walks_per_node must be >= 0, got {walks_per_node}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def walk_start_nodes(graph: ItemGraph, start_nodes: np.ndarray | None = None) -> np.ndarray:
    """Nodes that start walks: all (or the given) nodes with at least one edge."""
    deg = graph.degree()
    if start_nodes is None:
        return np.flatnonzero(deg > 0).astype(np.int64)
    start_nodes = np.asarray(start_nodes, dtype=np.int64)
    if len(start_nodes) and (start_nodes.min() < 0 or start_nodes.max() >= graph.n_items):
        raise ValueError(f"start_nodes outside 0..{graph.n_items - 1}")
    return start_nodes[deg[start_nodes] > 0]


def n_walks(graph: ItemGraph, walks_per_node: int = 20, start_nodes: np.ndarray | None = None) -> int:
    return len(walk_start_nodes(graph, start_nodes)) * walks_per_node


def _walk_chunk(starts: np.ndarray, walk_length: int, rng: np.random.Generator, node_start: np.ndarray,
                deg_f: np.ndarray, prob: np.ndarray, target: np.ndarray, alias_target: np.ndarray) -> np.ndarray:
    """Walks from `starts`; one uniform draw per walker and step picks slot and coin."""
    # Filled step by step as rows of a [walk_length, n] array: contiguous writes.
    steps = np.empty((walk_length, len(starts)), dtype=np.int32)
    steps[0] = starts
    cur = starts
    ended = None  # walkers that hit a dead end; None while there are none
    for t in range(1, walk_length):
        deg = deg_f[cur]
        u = rng.random(len(cur))
        u *= deg
        slot = u.astype(np.int64)
        np.minimum(slot, deg.astype(np.int64) - 1, out=slot)  # u*deg can round up to deg
        edge = node_start[cur] + slot
        u -= slot  # the remaining fraction is the alias coin
        nxt = np.where(u < prob[edge], target[edge], alias_target[edge])
        stuck = deg == 0
        if ended is not None:
            stuck |= ended
        if stuck.any():
            ended = stuck
            nxt[stuck] = -1
            steps[t] = nxt
            nxt[stuck] = 0  # any valid node; its row is masked out above
        else:
            steps[t] = nxt
        cur = nxt
    return np.ascontiguousarray(steps.T)


@dataclass
class WalkArrays:
    """What advancing walkers needs, compact: built once per graph, shipped once to every worker."""

    node_start: np.ndarray  # int64 first edge of each node
    deg_f: np.ndarray  # float64 degree of each node
    prob: np.ndarray  # float32 alias coin per edge
    target: np.ndarray  # int32 edge target
    alias_target: np.ndarray  # int32 the alias' target node per edge

    @classmethod
    def from_graph(cls, graph: ItemGraph, alias_table: AliasTable | None = None) -> "WalkArrays":
        table = alias_table if alias_table is not None else build_alias_table(graph)
        # the coin only needs float32, and storing the alias' target node saves a dependent gather per step
        return cls(graph.indptr[:-1].astype(np.int64), np.diff(graph.indptr).astype(np.float64),
                   table.prob.astype(np.float32), graph.indices, graph.indices[table.alias])


def walk_chunk(arrays: WalkArrays, starts: np.ndarray, walk_length: int, key: tuple[int, int, int]) -> np.ndarray:
    """The walks of one chunk of a round: `starts` advanced by the generator seeded with key = (seed, round,
    chunk + 1). A pure function of its arguments: the unit that runs anywhere (a Dask task)."""
    rng = np.random.default_rng(list(key))
    return _walk_chunk(starts, walk_length, rng, arrays.node_start, arrays.deg_f, arrays.prob, arrays.target,
                       arrays.alias_target)


def serial_chunks(arrays: WalkArrays, chunks: list[tuple[np.ndarray, tuple[int, int, int]]],
                  walk_length: int) -> Iterator[np.ndarray]:
    """Run the chunks of a round one after the other, in this process (the default walk runner)."""
    for starts, key in chunks:
        yield walk_chunk(arrays, starts, walk_length, key)


def round_chunks(starts_all: np.ndarray, seed: int, rnd: int) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """(start nodes, generator key) of each chunk of round `rnd`: a seeded shuffle of every start node cut
    into chunks of CHUNK_WALKS. Fixed by the seed alone, so a round's walks are the same whoever runs its
    chunks, in whatever number of workers."""
    order = np.random.default_rng([seed, rnd, 0]).permutation(starts_all)
    return [(order[lo:lo + CHUNK_WALKS], (seed, rnd, c + 1)) for c, lo in enumerate(range(0, len(order), CHUNK_WALKS))]


def iter_walks(graph: ItemGraph, walk_length: int = 10, walks_per_node: int = 20, seed: int = 0,
               batch_size: int = DEFAULT_BATCH_SIZE, start_nodes: np.ndarray | None = None,
               alias_table: AliasTable | None = None, run_chunks=None) -> Iterator[np.ndarray]:
    """Weighted random walks as int32 batches of shape [<= batch_size, walk_length].

    A walk that reaches a node without edges is padded with -1. `start_nodes`
    restricts the walks to start from these nodes (a shard of the item range);
    nodes without edges never start a walk. `alias_table` (from
    `build_alias_table(graph)`) lets repeated passes over one graph build it once.
    `run_chunks(arrays, chunks, walk_length)` runs a round's chunks and yields
    their walks in order (default `serial_chunks`; recsys/jobs/dask_walks.py
    runs them on a Dask cluster): the walks are the same either way.
    """
    _check_args(walk_length, walks_per_node, batch_size)
    starts_all = walk_start_nodes(graph, start_nodes)
    if len(starts_all) == 0 or walks_per_node == 0:
        return
    arrays = WalkArrays.from_graph(graph, alias_table)
    run_chunks = run_chunks or serial_chunks
    pending: list[np.ndarray] = []
    n_pending = 0
    for rnd in range(walks_per_node):
        for walks in run_chunks(arrays, round_chunks(starts_all, seed, rnd), walk_length):
            pending.append(walks)
            n_pending += len(walks)
            if n_pending >= batch_size:
                buffered = np.concatenate(pending) if len(pending) > 1 else pending[0]
                cut = (len(buffered) // batch_size) * batch_size
                for b in range(0, cut, batch_size):
                    yield buffered[b:b + batch_size]
                pending = [buffered[cut:]] if cut < len(buffered) else []
                n_pending = len(buffered) - cut
    if n_pending:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def generate_walks(graph: ItemGraph, walk_length: int = 10, walks_per_node: int = 20, seed: int = 0,
                   start_nodes: np.ndarray | None = None, run_chunks=None) -> np.ndarray:
    """All walks at once: int32 [n_walks, walk_length]."""
    batches = list(iter_walks(graph, walk_length, walks_per_node, seed, start_nodes=start_nodes,
                              run_chunks=run_chunks))
    if not batches:
        return np.zeros((0, walk_length), dtype=np.int32)
    return np.concatenate(batches)
