"""Weighted random walks over an `ItemGraph` (DeepWalk with edge weights).

A walker at node v moves to neighbour u with probability w(v,u) / sum_u' w(v,u').
Sampling uses per-node alias tables (Walker/Vose), built for all nodes at
once with prefix sums, so one step for a whole batch of walkers is a handful
of numpy gathers: O(1) per step, no per-node Python.

Determinism: walkers are cut into fixed chunks of `CHUNK_WALKS`, each with
its own generator seeded by (seed, round, chunk), so the walks depend only
on the seed and the start nodes, never on `batch_size`. Each round starts
one walk from every node with an edge, in a fresh seeded shuffle (as
DeepWalk does); `walks_per_node` rounds in all. Memory stays at one chunk
plus one batch whatever the number of walks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from recsys.graph import ItemGraph

CHUNK_WALKS = 1 << 15  # walkers advanced together; fixed so results never depend on batch_size
DEFAULT_BATCH_SIZE = 1 << 16


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
    up at node boundaries and a single searchsorted serves all nodes.
    """
    indptr = graph.indptr.astype(np.int64)
    deg = np.diff(indptr)
    n_edges = len(graph.weights)
    prob = np.ones(n_edges, dtype=np.float64)
    alias = np.arange(n_edges, dtype=np.int64)
    if n_edges == 0:
        return AliasTable(prob, alias)
    w = graph.weights.astype(np.float64)
    node = np.repeat(np.arange(len(deg), dtype=np.int64), deg)
    has_edges = deg > 0
    strength = np.add.reduceat(w, indptr[:-1][has_edges])
    scaled = np.empty(n_edges)
    scaled = w * (deg[has_edges] / strength)[np.cumsum(has_edges)[node] - 1]
    row_max = np.maximum.reduceat(scaled, indptr[:-1][has_edges])[np.cumsum(has_edges)[node] - 1]
    # The largest edge of each node is always heavy, so rounding can never
    # leave a node without a heavy.
    heavy = (scaled >= 1.0) | (scaled == row_max)
    light_idx = np.flatnonzero(~heavy)
    heavy_idx = np.flatnonzero(heavy)
    if len(light_idx) == 0:
        return AliasTable(prob, alias)
    deficit_incl = np.cumsum(1.0 - scaled[light_idx])  # P_i
    deficit_excl = deficit_incl - (1.0 - scaled[light_idx])  # P_(i-1)
    excess_incl = np.cumsum(np.maximum(scaled[heavy_idx] - 1.0, 0.0))  # X_j

    # Each node's heavies occupy one contiguous run of heavy_idx: clamp into it.
    heavies_per_node = np.bincount(node[heavy_idx], minlength=len(deg))
    heavy_start = np.cumsum(heavies_per_node) - heavies_per_node
    heavy_stop = heavy_start + heavies_per_node  # exclusive

    light_node = node[light_idx]
    j = np.searchsorted(excess_incl, deficit_excl, side="left")
    j = np.clip(j, heavy_start[light_node], heavy_stop[light_node] - 1)
    prob[light_idx] = scaled[light_idx]
    alias[light_idx] = heavy_idx[j]

    lights_per_node = np.bincount(light_node, minlength=len(deg))
    light_stop = np.cumsum(lights_per_node)  # exclusive end in light_idx
    heavy_node = node[heavy_idx]
    i = np.searchsorted(deficit_incl, excess_incl, side="right")
    pos = np.arange(len(heavy_idx))
    turns_light = (i < light_stop[heavy_node]) & (pos < heavy_stop[heavy_node] - 1)
    k = pos[turns_light]
    prob[heavy_idx[k]] = np.clip(1.0 + excess_incl[k] - deficit_incl[i[turns_light]], 0.0, 1.0)
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
                deg_f: np.ndarray, table: AliasTable, indices: np.ndarray) -> np.ndarray:
    walks = np.empty((len(starts), walk_length), dtype=np.int32)
    walks[:, 0] = starts
    cur = starts.astype(np.int64)
    alive = None  # None = every walker still has a node
    for t in range(1, walk_length):
        u = rng.random(len(cur)) * deg_f[cur]
        slot = u.astype(np.int64)
        np.minimum(slot, deg_f[cur].astype(np.int64) - 1, out=slot)  # u*deg can round up to deg
        edge = node_start[cur] + slot
        edge = np.where(u - slot < table.prob[edge], edge, table.alias[edge])
        nxt = indices[edge].astype(np.int64)
        stuck = deg_f[cur] == 0  # dead end: the walk ends here
        if alive is not None:
            stuck |= ~alive
        if stuck.any():
            alive = ~stuck
            nxt[stuck] = 0
            walks[:, t] = np.where(stuck, -1, nxt)
        else:
            walks[:, t] = nxt
        cur = nxt
    return walks


def iter_walks(graph: ItemGraph, walk_length: int = 10, walks_per_node: int = 20, seed: int = 0,
               batch_size: int = DEFAULT_BATCH_SIZE, start_nodes: np.ndarray | None = None
               ) -> Iterator[np.ndarray]:
    """Weighted random walks as int32 batches of shape [<= batch_size, walk_length].

    A walk that reaches a node without edges is padded with -1. `start_nodes`
    restricts the walks to start from these nodes (a shard of the item range);
    nodes without edges never start a walk.
    """
    _check_args(walk_length, walks_per_node, batch_size)
    starts_all = walk_start_nodes(graph, start_nodes)
    if len(starts_all) == 0 or walks_per_node == 0:
        return
    table = build_alias_table(graph)
    node_start = graph.indptr[:-1].astype(np.int64)
    deg_f = np.diff(graph.indptr).astype(np.float64)
    indices = graph.indices
    pending: list[np.ndarray] = []
    n_pending = 0
    for rnd in range(walks_per_node):
        order = np.random.default_rng([seed, rnd, 0]).permutation(starts_all)
        for c, lo in enumerate(range(0, len(order), CHUNK_WALKS)):
            rng = np.random.default_rng([seed, rnd, c + 1])
            pending.append(_walk_chunk(order[lo:lo + CHUNK_WALKS], walk_length, rng, node_start, deg_f, table, indices))
            n_pending += len(pending[-1])
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
                   start_nodes: np.ndarray | None = None) -> np.ndarray:
    """All walks at once: int32 [n_walks, walk_length]."""
    batches = list(iter_walks(graph, walk_length, walks_per_node, seed, start_nodes=start_nodes))
    if not batches:
        return np.zeros((0, walk_length), dtype=np.int32)
    return np.concatenate(batches)
