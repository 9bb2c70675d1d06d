"""A candidate index split by item range into shards searched in parallel and merged.

Catalogues beyond one process's memory (or one core's scanning speed) split
the candidate codes into N shards. Every shard is a copy of ONE trained
FAISS index (the same PQ codebooks, the same IVF centroids) filled with a
contiguous range of items, so each item's codes, and every first-stage
score, are exactly what the unsharded index holds: `faiss.IndexShards`
searches the shards in threads and merges their top k, and the results
equal the unsharded index's (up to the order of tied scores).

IVF shards store the global item ids (they keep ids anyway), so the
`IDSelector` of a filter works on them unchanged; flat shards number their
items from 0 and `IndexShards` adds each shard's offset (`successive_ids`),
so a filter is applied to the merged ids instead (the index's over-fetch
path). Each shard is one file, `candidates.<i>.faiss`, of the index folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import faiss
import numpy as np


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def decode_ivf(index: faiss.Index, first_id: int = 0) -> np.ndarray:
    """Every item's decoded vector of an IVF index (PQ, fast-scan PQ, or other flat codes); row i holds the
    item stored with id first_id + i.

    Read from the inverted lists themselves: FAISS 1.15 crashes reconstructing from an IVF fast-scan
    index read back from a file (its direct map finds no packed codes), so nothing here relies on one.
    """
    ivf = faiss.downcast_index(_ivf(index))
    out = np.zeros((index.ntotal, index.d), np.float32)
    fast = isinstance(ivf, faiss.IndexIVFFastScan)
    packer = ivf.get_CodePacker() if fast else None
    for lst in range(ivf.nlist):
        size = ivf.invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), size).copy()
        if fast:  # codes interleaved in blocks of `nvec`: unpack each block
            n_blocks = (size + packer.nvec - 1) // packer.nvec
            block = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), n_blocks * packer.block_size)
            flat = np.zeros((n_blocks * packer.nvec, packer.code_size), np.uint8)
            for b in range(n_blocks):
                packer.unpack_all(faiss.swig_ptr(block[b * packer.block_size:]), faiss.swig_ptr(flat[b * packer.nvec:]))
            codes = flat[:size]
        else:
            codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(lst), size * ivf.code_size).reshape(size, ivf.code_size)
        vectors = ivf.pq.decode(np.ascontiguousarray(codes))
        if ivf.by_residual:
            vectors = vectors + ivf.quantizer.reconstruct(lst)
        out[ids - first_id] = vectors
    return out


def shard_bounds(n_items: int, n_shards: int) -> np.ndarray:
    """(n_shards + 1,) item-range bounds, as even as possible."""
    if not 1 <= n_shards <= max(1, n_items):
        raise ValueError(f"cannot split {n_items} items into {n_shards} shards")
    return np.linspace(0, n_items, n_shards + 1).round().astype(np.int64)


def fill_shard(trained: faiss.Index, vectors: np.ndarray, start: int) -> faiss.Index:
    """A copy of the trained index holding `vectors`, the items start, start + 1, ...: one shard."""
    shard = faiss.clone_index(trained)
    if _ivf(shard) is not None:
        shard.add_with_ids(vectors, np.arange(start, start + len(vectors), dtype=np.int64))
    else:
        shard.add(vectors)
    return shard


def fill_here(trained: faiss.Index, vectors: np.ndarray, ranges: list[tuple[int, int]]) -> list[faiss.Index]:
    """The shards of these item ranges, filled in this process (the FillShards of one machine)."""
    return [fill_shard(trained, vectors[start:stop], start) for start, stop in ranges]


# (trained empty index, all vectors, item ranges) -> one filled shard per range
FillShards = Callable[[faiss.Index, np.ndarray, list[tuple[int, int]]], list[faiss.Index]]


class ShardedCodes:
    """The candidate side as N FAISS shards over item ranges (duck-types the parts of faiss.Index used)."""

    def __init__(self, shards: list[faiss.Index], bounds: np.ndarray):
        self.shards = list(shards)
        self.bounds = np.asarray(bounds, np.int64)
        if len(self.bounds) != len(self.shards) + 1:
            raise ValueError(f"{len(self.shards)} shards need {len(self.shards) + 1} bounds, got {len(self.bounds)}")
        for i, shard in enumerate(self.shards):
            want = int(self.bounds[i + 1] - self.bounds[i])
            if shard.ntotal != want:
                raise ValueError(f"shard {i} holds {shard.ntotal} items, its range {want}")
        self.is_ivf = _ivf(self.shards[0]) is not None
        self.d = self.shards[0].d
        self.ntotal = int(self.bounds[-1])
        self._merged = faiss.IndexShards(self.d, True, not self.is_ivf)  # threaded; flat: successive ids
        for shard in self.shards:
            self._merged.add_shard(shard)

    def __getstate__(self):  # faiss.IndexShards does not serialise: its shards do (a cluster's tasks copy it)
        return {"shards": [faiss.serialize_index(shard) for shard in self.shards], "bounds": self.bounds}

    def __setstate__(self, state):
        self.__init__([faiss.deserialize_index(shard) for shard in state["shards"]], state["bounds"])

    @classmethod
    def fill(cls, trained: faiss.Index, vectors: np.ndarray, n_shards: int,
             fill_shards: "FillShards | None" = None) -> "ShardedCodes":
        """Copies of the trained (empty) index, each filled with its range of `vectors`.

        fill_shards: where the shards are filled (`fill_here`, or a cluster's tasks:
        recsys/jobs/dask_index.py); the codes are the same wherever they are computed.
        """
        if trained.ntotal:
            raise ValueError("fill() wants the trained index before any vector was added")
        bounds = shard_bounds(len(vectors), n_shards)
        ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        return cls((fill_shards or fill_here)(trained, vectors, ranges), bounds)

    # -- what SimilarityIndex uses of a faiss.Index ------------------------------------------
    @property
    def first_shard(self) -> faiss.Index:
        return self.shards[0]

    def search(self, x: np.ndarray, k: int, params=None):
        return self._merged.search(x, k, params=params)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        if self.is_ivf:  # shards hold global ids; decoded from their lists (see decode_ivf)
            table = np.concatenate([decode_ivf(shard, int(start)) for shard, start in zip(self.shards, self.bounds)])
            return table[ids]
        out = np.empty((len(ids), self.d), np.float32)
        owner = np.searchsorted(self.bounds, ids, side="right") - 1
        for s in np.unique(owner):
            at = np.flatnonzero(owner == s)
            out[at] = self.shards[s].reconstruct_batch(ids[at] - self.bounds[s])
        return out

    # -- files -------------------------------------------------------------------------
    @staticmethod
    def file_name(i: int) -> str:
        return f"candidates.{i}.faiss"

    def save(self, folder: Path) -> None:
        for i, shard in enumerate(self.shards):
            faiss.write_index(shard, str(folder / self.file_name(i)))

    @classmethod
    def load(cls, folder: Path, bounds) -> "ShardedCodes":
        return cls([faiss.read_index(str(folder / cls.file_name(i))) for i in range(len(bounds) - 1)], bounds)

    def serialized_bytes(self) -> int:
        """Bytes of the shard files as written."""
        return int(sum(faiss.serialize_index(shard).size for shard in self.shards))
