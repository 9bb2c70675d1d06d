"""A sharded index's shards filled on a Dask cluster: the `fill_shards` of recsys.serving.shards.

Every shard is a copy of one trained FAISS index filled with its item range
(recsys/serving/shards.py). Here the trained, empty index is serialised once
and scattered to every worker, each range's vectors are scattered to the
cluster, and each shard is one task that encodes its range and returns the
filled shard's bytes. Encoding is deterministic, so the shards equal those
filled in one process, code for code (tests/test_scale_out.py).
"""
from __future__ import annotations

import faiss
import numpy as np

from recsys.serving.shards import fill_here, fill_shard


def _fill_serialized(trained: np.ndarray, vectors: np.ndarray, start: int) -> np.ndarray:
    return faiss.serialize_index(fill_shard(faiss.deserialize_index(trained), vectors, start))


class DaskShardFiller:
    """Fills index shards as tasks of a distributed.Client's cluster."""

    def __init__(self, client):
        self.client = client
        self.shards_run = 0

    def __call__(self, trained: faiss.Index, vectors: np.ndarray, ranges: list[tuple[int, int]]) -> list[faiss.Index]:
        if len(ranges) <= 1:  # nothing to spread
            return fill_here(trained, vectors, ranges)
        shipped = self.client.scatter(faiss.serialize_index(trained), broadcast=True, hash=False)
        parts = self.client.scatter([np.ascontiguousarray(vectors[a:b]) for a, b in ranges], hash=False)
        futures = [self.client.submit(_fill_serialized, shipped, part, start, pure=False)
                   for part, (start, _) in zip(parts, ranges)]
        try:
            shards = [faiss.deserialize_index(future.result()) for future in futures]
        finally:
            for future in [*futures, *parts, shipped]:
                future.release()
        self.shards_run += len(shards)
        return shards
