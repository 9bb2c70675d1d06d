"""The compressed similar-items index: FAISS product quantisation on both sides of the inner product.

Scores are maximum inner products <query, candidate> (`recsys.vectors.Scorer`
puts every scoring rule in that form, a popularity prior being
one more candidate column). The index keeps

* the candidate side as a FAISS index built from a factory string, searched
  with asymmetric distances (exact query, coded candidates). The default
  ("auto", chosen on Ta-Feng EGES vectors, see docs/evaluation.md) is 4-bit
  fast-scan PQ, one dimension per 4-bit code, plus one code of its own for
  the prior column: PQ65x4fs at dim 64. FAISS scans it with SIMD over
  8-bit look-up tables (a batch of 1,000 queries on Ta-Feng in 27 ms on one
  core); a pool of k * k_factor is then re-scored from the decoded codes
  with the prior column exact (float16). IVF lists in front of 8-bit PQ
  from `ivf_min_items` on;
* the query side of every indexed item ("similar to item X") coded too
  (`query_factory`, "auto" = PQ16 at dim 64, PQ4 behind IVF), since float32 query vectors
  would cost more than the whole candidate index. Columns every query has
  the same value in (the prior's weight, 1) are kept as numbers; when both
  sides are the same vectors (cosine/dot scorers) nothing extra is stored;
* optionally a re-ranking codec ("rerank", e.g. "SQ4"): the first stage
  returns k * k_factor candidates, re-scored from the finer codes (the
  scheme of faiss.IndexRefine, done here so that filters act on the first
  stage).

Columns are placed in zero-padded FAISS vectors (factories need widths they
can split), which changes no inner product. Everything is stored as FAISS
binary files, .npy arrays (read with allow_pickle=False) and JSON: nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np

from recsys.jsonsafe import json_safe as _json_safe
from recsys.serving.shards import ShardedCodes, decode_ivf
from recsys.vectors import Scorer

# the layout of index.json and the files beside it; a bundle's own format is recsys.serving.bundle.FORMAT_VERSION
INDEX_FORMAT_VERSION = 1
CANDIDATE_FILE, RERANK_FILE, QUERY_FILE, META_FILE = "candidates.faiss", "rerank.faiss", "queries.faiss", "index.json"
HALF_FILE = "queries_f16.npy"  # query side kept as float16 (query_factory=None)
PRIOR_FILE = "prior_f16.npy"  # the prior column, exact (float16), for re-scoring
QUERY_MAP_FILE = "query_map.npy"  # the linear map of a residual query side
MAX_PAD = 64  # zero columns tried when a factory does not accept the vectors' width
RESCORE_BLOCK = 64  # queries re-scored together from the decoded table
# "auto" query side: PQ16 at 64 dimensions. A coarser one costs warm recall (a 200k-item synthetic shop:
# -13.7% warm Recall@20 with PQ4, -10.5% with PQ8, -5.8% with PQ16 behind IVF lists; docs/benchmarks.md);
# the run's index check (recsys/jobs/index_check.py) tries finer ones where it must.
AUTO_QUERY_DIMS_PER_BYTE = 4


@dataclass
class IndexConfig:
    """How the index compresses and searches (every field is JSON-able)."""

    # FAISS index_factory string of the candidate side (inner-product metric); "auto": 4-bit fast-scan PQ,
    # `fast_scan_dims` dimensions per code, the prior column in a code of its own; from ivf_min_items on
    # the same codes behind IVF lists
    factory: str = "auto"
    fast_scan_dims: int = 1  # "auto": dimensions per 4-bit code of the candidate side (1: 4 bits a dimension)
    query_factory: str | None = "auto"  # codec of the query side ("auto": PQ, 4 dims a byte); None = float16
    # "auto" puts IVF lists in front from this many items on: flat fast-scan over the 1M shop's 633k candidates
    # took p99 1.0 ms a query and 564 ms a batch of 1,000 (2 dims a code), IVF1024 with 64 probes p99 0.76 ms
    # and 150 ms (1 dim a code); at 200k flat was still p99 0.61 ms (docs/benchmarks.md, section 6)
    ivf_min_items: int = 500_000
    nlist: int = 0  # IVF lists of "auto" (0: about sqrt(n_items), a power of two)
    # "auto" uses small_factory below this many items: FAISS wants >= 39 training vectors per PQ centroid,
    # and under it the codebooks (256 centroids each) outweigh the codes anyway
    pq_min_items: int = 10_000
    rerank: str | None = None  # finer flat codec to re-score the first stage's pool (e.g. "SQ6", "PQ32")
    # a coded query side holds the residual of a linear map from the item's decoded candidate row (and the
    # caller's query_basis): the same bytes, a finer query (SimilarityIndex.build)
    query_residual: bool = True
    # pool = k * k_factor candidates when re-scoring (rerank, fast-scan, exact prior). Fast-scan's 8-bit look-up
    # tables rank coarsely: on Ta-Feng a pool of 4 k lost 5% of warm and 8% of cold Recall@20, 10 k none / 3%
    k_factor: int = 10
    # decoded candidate vectors are kept in memory for re-scoring up to this size (else decoded per query)
    decoded_cache_bytes: int = 256 << 20
    nprobe: int = 64  # IVF lists visited per query (IVF factories only; 16 of 1024 lost 7% at 1M items)
    # candidate codes split by item range into this many shards, searched in parallel threads and merged
    # (recsys/serving/shards.py): results equal the unsharded index's
    shards: int = 1
    train_sample: int = 100_000  # quantisers are trained on at most this many vectors
    small_factory: str = "SQ8"  # for catalogues too small to train `factory` / query_factory well
    exact_fallback_max: int = 512  # filters allowing at most this many items are scored exactly from codes
    recall_queries: int = 1000  # queries sampled for stats["recall_at_10"]; 0 = skip
    seed: int = 0

    def validate(self) -> None:
        for name in ("factory", "small_factory"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"IndexConfig.{name} must be a non-empty FAISS factory string")
        for name in ("query_factory", "rerank"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"IndexConfig.{name} must be None or a non-empty FAISS factory string")
        for name in ("k_factor", "nprobe", "train_sample", "ivf_min_items", "pq_min_items", "decoded_cache_bytes",
                     "fast_scan_dims", "shards"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("exact_fallback_max", "recall_queries", "nlist"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"IndexConfig.{name} must be >= 0, got {getattr(self, name)}")


# --------------------------------------------------------------------------- FAISS helpers
def _as_matrix(x, name: str, width: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d (rows, dim), got shape {x.shape}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{name} must have {width} columns, got {x.shape[1]}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] == width:
        return x
    out = np.zeros((len(x), width), np.float32)
    out[:, :x.shape[1]] = x
    return out


def _place(x: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The FAISS vectors: column j of x at place positions[j], zeros elsewhere (no inner product changes)."""
    if width == x.shape[1] and np.array_equal(positions, np.arange(x.shape[1])):
        return x
    out = np.zeros((len(x), width), np.float32)
    out[:, positions] = x
    return out


def _constant_columns(query: np.ndarray) -> dict[int, float]:
    """Columns every query has the same value in (the prior column's weight): stored as numbers."""
    same = np.flatnonzero((query == query[:1]).all(axis=0))
    return {int(c): float(query[0, c]) for c in same}


def _candidate_layout(config: IndexConfig, n: int, dim: int, prior: bool) -> tuple[str, np.ndarray, int]:
    """(factory, place of each column, width) of the candidate side.

    "auto": 4-bit fast-scan PQ (`fast_scan_dims` dimensions per code;
    SIMD scanning of whole batches, and codebooks of 16 centroids that weigh
    nothing), the prior column (when the query side marks one) alone in a
    sub-quantizer of its own: mixed with embedding dimensions its levels
    were too coarse and the popularity signal got lost (Ta-Feng: -17% warm
    Recall@20 with it mixed). Search re-scores a pool from the decoded codes
    with the prior exact. From `ivf_min_items` on the same codes behind IVF
    lists (IndexIVFPQFastScan), which keeps single queries fast.
    """
    if config.factory != "auto":
        return config.factory, np.arange(dim), dim
    if n < config.pq_min_items:
        return config.small_factory, np.arange(dim), dim
    body = dim - 1 if prior else dim
    per_code = int(config.fast_scan_dims)
    m = max(1, math.ceil(body / per_code))
    positions = np.arange(dim)
    if prior:
        positions[-1] = m * per_code  # first place of its own sub-quantizer
    factory = f"PQ{m + int(prior)}x4fs"
    if n >= config.ivf_min_items:
        factory = f"IVF{config.nlist or _auto_nlist(n)},{factory}"
    return factory, positions, (m + int(prior)) * per_code


def _auto_nlist(n: int) -> int:
    """About sqrt(n) lists, a power of two (1024 at 1M items)."""
    return int(2 ** round(math.log2(max(16.0, math.sqrt(n)))))


def _new_index(factory: str, dim: int) -> tuple[faiss.Index, int]:
    """(untrained index, padded width): the smallest width >= dim the factory accepts."""
    last_error = None
    for width in range(dim, dim + MAX_PAD + 1):
        try:
            return faiss.index_factory(width, factory, faiss.METRIC_INNER_PRODUCT), width
        except RuntimeError as exc:  # e.g. PQ16 on a width that is not a multiple of 16
            last_error = exc
    raise ValueError(f"FAISS factory {factory!r} accepts no width from {dim} to {dim + MAX_PAD}: {last_error}")


def _ivf(index: faiss.Index):
    if isinstance(index, ShardedCodes):
        return _ivf(index.first_shard)
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _no_polysemous_training(index: faiss.Index) -> None:
    """index_factory turns on polysemous training for PQ; it only serves Hamming filtering (unused
    here) and makes training some 30x slower."""
    index = faiss.downcast_index(index)
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False
    if isinstance(index, faiss.IndexPreTransform):
        _no_polysemous_training(index.index)


def _train_and_add(factory: str, vectors: np.ndarray, sample: np.ndarray, shards: int = 1,
                   fill_shards=None) -> tuple[faiss.Index, int]:
    index, width = _new_index(factory, vectors.shape[1])
    _no_polysemous_training(index)
    if not index.is_trained:
        index.train(_pad(vectors[sample], width))
    if shards > 1:  # copies of the one trained index, each filled with its item range
        return ShardedCodes.fill(index, _pad(vectors, width), shards, fill_shards), width
    index.add(_pad(vectors, width))
    return index, width


def _build_codec(factory: str, small_factory: str, vectors: np.ndarray, sample: np.ndarray,
                 shards: int = 1, fill_shards=None) -> tuple[faiss.Index, int, str]:
    """Train and fill `factory`; fall back to `small_factory` when there are too few vectors to train it."""
    try:
        index, width = _train_and_add(factory, vectors, sample, shards, fill_shards)
        return index, width, factory
    except RuntimeError:  # FAISS: fewer training points than centroids (tiny catalogues)
        index, width = _train_and_add(small_factory, vectors, sample, shards, fill_shards)
        return index, width, small_factory


def _index_bytes(index: faiss.Index) -> int:
    if isinstance(index, ShardedCodes):
        return index.serialized_bytes()
    return int(faiss.serialize_index(index).size)


def _decode(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Decoded vectors of the given rows (IVF indexes: every row decoded from the lists, then taken; the
    SimilarityIndex keeps IVF tables decoded, so this runs once). No direct map is ever built, so none is
    written or counted in the index's bytes."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if isinstance(index, ShardedCodes):
        return index.reconstruct_batch(ids)
    if _ivf(index) is not None:
        return decode_ivf(index)[ids]
    return index.reconstruct_batch(ids)


def _decoded_candidates(candidates, rerank, positions: np.ndarray, prior_exact, dim: int) -> np.ndarray:
    """Every item's decoded candidate vector (as `SimilarityIndex.candidate_vectors` returns them)."""
    codec = rerank if rerank is not None else candidates
    out = _decode(codec, np.arange(codec.ntotal))[:, positions]
    if prior_exact is not None:
        out[:, dim - 1] = prior_exact.astype(np.float32)
    return out


def _predictors(decoded: np.ndarray, basis: np.ndarray | None) -> np.ndarray:
    """[decoded candidate rows, basis rows, 1]: what the residual query side is predicted from."""
    parts = [decoded] + ([basis] if basis is not None else []) + [np.ones((len(decoded), 1), np.float32)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row by score (descending), carrying `ids` (same shape) along."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _front_valid(scores: np.ndarray, ids: np.ndarray, valid: np.ndarray):
    """Move each row's valid entries to the front, keeping their order."""
    order = np.argsort(~valid, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def exact_search(item_matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products (FAISS flat index, blocked over queries)."""
    item_matrix = _as_matrix(item_matrix, "item_matrix")
    flat = faiss.IndexFlatIP(item_matrix.shape[1])
    flat.add(item_matrix)
    return flat.search(_as_matrix(queries, "queries", item_matrix.shape[1]), min(k, len(item_matrix)))


# --------------------------------------------------------------------------- the index
class SimilarityIndex:
    """Compressed maximum-inner-product index over the candidate side, plus the coded query side."""

    def __init__(self, candidates: faiss.Index, rerank: faiss.Index | None, queries: faiss.Index | None,
                 query_half: np.ndarray | None, meta: dict, prior_exact: np.ndarray | None = None,
                 query_map: np.ndarray | None = None):
        self.candidates, self.rerank, self.queries, self.query_half = candidates, rerank, queries, query_half
        self.prior_exact = prior_exact  # float16 per item: the prior column, exact, for re-scoring
        # coded query side as a residual: query body = [decoded candidate row, basis row, 1] @ query_map + codes
        self.query_map = query_map
        self.meta = meta
        self.config = IndexConfig(**meta["config"])
        self.n_items = int(meta["n_items"])
        self.dim = int(meta["dim"])
        self._positions = np.asarray(meta["positions"], dtype=np.int64)  # column -> place in the FAISS vectors
        self._ivf = _ivf(candidates)
        if self._ivf is not None:
            self._ivf.nprobe = min(self.config.nprobe, self._ivf.nlist)
        sharded = isinstance(candidates, ShardedCodes)
        first = candidates.first_shard if sharded else candidates
        # IndexPQ and the flat fast-scan indexes refuse an IDSelector: those are over-fetched and filtered;
        # so are flat shards, whose own ids are local (IVF shards hold the global ids)
        self._selector_ok = self._ivf is not None or (not sharded and isinstance(
            candidates, (faiss.IndexFlat, faiss.IndexScalarQuantizer)))
        # a second stage re-scores a pool of k * k_factor: from finer codes (rerank), or from the
        # first stage's own codes decoded exactly (fast-scan searches with 8-bit look-up tables) with
        # the prior column exact
        self._fast_scan = isinstance(faiss.downcast_index(first), faiss.IndexFastScan)
        self._two_stage = rerank is not None or self._fast_scan or prior_exact is not None
        self._decoded: np.ndarray | None = None  # lazily decoded candidate vectors (decoded_cache_bytes)

    # -- building ----------------------------------------------------------------
    @classmethod
    def build(cls, item_matrix: np.ndarray, query_matrix: np.ndarray | None,
              config: IndexConfig | None = None, query_basis: np.ndarray | None = None,
              fill_shards=None) -> "SimilarityIndex":
        """Train and fill the index; query_matrix row i is item i's query vector (None = no query side).

        fill_shards: where a sharded index's shards are filled (recsys.serving.shards.FillShards; default
        here, in this process).

        A coded query side stores what a linear map of the item's own decoded
        candidate row (and of `query_basis`, per-item vectors the caller can
        recompute at query time, e.g. the side-feature vectors of a model) does
        not predict: on EGES vectors of a 200k-item shop the residual holds 13%
        of the query vectors' variance, so the same bytes code it finer. Such
        an index wants the same basis rows in `query_vectors(rows, basis=...)`.
        """
        config = config or IndexConfig()
        config.validate()
        started = time.perf_counter()
        items = _as_matrix(item_matrix, "item_matrix")
        n, dim = items.shape
        if n == 0 or dim == 0:
            raise ValueError(f"item_matrix of shape {items.shape} holds nothing to index")
        query = None
        if query_matrix is not None:
            query = _as_matrix(query_matrix, "query_matrix", dim)
            if len(query) != n:
                raise ValueError(f"query_matrix has {len(query)} rows, item_matrix {n}: one query vector per item")
        rng = np.random.default_rng(config.seed)
        sample = np.sort(rng.choice(n, config.train_sample, replace=False)) if n > config.train_sample else np.arange(n)

        # candidate side: the columns' places in the FAISS vectors, then the codes
        constants = _constant_columns(query) if query is not None else {}
        prior = dim > 1 and (dim - 1) in constants  # last column weighted the same by every query: a prior
        factory, positions, width = _candidate_layout(config, n, dim, prior)
        placed = _place(items, positions, width)
        shards = min(int(config.shards), n)
        candidates, width, factory_used = _build_codec(factory, config.small_factory, placed, sample, shards,
                                                       fill_shards)
        rerank = _build_codec(config.rerank, config.small_factory, placed, sample)[0] if config.rerank else None

        # query side: constant columns are kept as numbers, the rest coded (or shared with the candidates)
        query_codec, query_half, query_kind, query_factory_used, query_map = None, None, "none", None, None
        decoded = None  # the decoded candidates, when the residual query side needs them
        body = [c for c in range(dim) if c not in constants]
        prior_exact = None
        if prior and config.factory == "auto" and factory_used != config.small_factory:
            prior_exact = items[:, dim - 1].astype(np.float16)
        if query_basis is not None:
            query_basis = _as_matrix(query_basis, "query_basis")
            if len(query_basis) != n:
                raise ValueError(f"query_basis has {len(query_basis)} rows, item_matrix {n}: one row per item")
        if query is not None:
            if np.array_equal(query, items):
                query_kind = "candidates"  # same vectors (cosine/dot scorers): decode the candidate codes
            elif not body:
                query_kind = "constants"
            elif config.query_factory is None:
                query_kind, query_half = "float16", query[:, body].astype(np.float16)
            else:
                query_kind = "codes"
                qf = config.query_factory
                if qf == "auto":
                    qf = (config.small_factory if n < config.pq_min_items
                          else f"PQ{max(1, math.ceil(len(body) / AUTO_QUERY_DIMS_PER_BYTE))}")
                target = np.ascontiguousarray(query[:, body])
                if config.query_residual:
                    decoded = _decoded_candidates(candidates, rerank, positions, prior_exact, dim)
                    predictors = _predictors(decoded, query_basis)
                    query_map = np.linalg.lstsq(predictors[sample], target[sample], rcond=None)[0].astype(np.float32)
                    target = np.ascontiguousarray(target - predictors @ query_map)
                    del predictors
                query_codec, _, query_factory_used = _build_codec(qf, config.small_factory, target, sample)
        meta = {"format_version": INDEX_FORMAT_VERSION, "metric": "inner_product", "config": dataclasses.asdict(config),
                "n_items": n, "dim": dim, "padded_dim": width, "positions": [int(p) for p in positions],
                "factory_used": factory_used, "prior_column": dim - 1 if prior else None,
                "query_side": query_kind, "query_factory_used": query_factory_used, "query_columns": body,
                "query_constants": {str(c): float(v) for c, v in constants.items()} if query_kind in
                ("codes", "float16", "constants") else {},
                "query_residual": query_map is not None,
                "query_basis_dim": int(query_basis.shape[1]) if query_map is not None and query_basis is not None else 0}
        meta["prior_exact"] = prior_exact is not None
        meta["shard_bounds"] = ([int(b) for b in candidates.bounds] if isinstance(candidates, ShardedCodes)
                                else None)
        index = cls(candidates, rerank, query_codec, query_half, meta, prior_exact, query_map)
        if decoded is not None and index._keeps_whole_table():
            index._decoded = decoded  # decoded once: what queries re-score from
        stats = {"build_seconds": time.perf_counter() - started, **index.size_breakdown()}
        if config.recall_queries and query is not None:
            pick = rng.choice(n, min(n, config.recall_queries), replace=False)
            # end to end: coded query side and coded candidates against the exact float32 ranking
            basis = query_basis[pick] if index.meta["query_basis_dim"] else None
            stats["recall_at_10"] = measure_recall(index, items, index.query_vectors(pick, basis=basis), k=10,
                                                   truth_queries=query[pick])
            stats["recall_at_10_candidates"] = measure_recall(index, items, query[pick], k=10)
        index.meta["stats"] = stats
        return index

    def with_items(self, item_matrix: np.ndarray, query_matrix: np.ndarray | None = None,
                   query_basis: np.ndarray | None = None) -> "SimilarityIndex":
        """A copy with rows appended (rows n_items.. in order), coded by the same trained quantisers.

        The existing rows' codes are copied unchanged, so every item the index
        already had keeps its vectors (a patch version's contract).
        query_matrix: the new rows' query vectors (columns the index stores
        as constants are taken from the index, not from it); query_basis:
        their basis rows, for an index whose query side is a residual.
        """
        if isinstance(self.candidates, ShardedCodes):
            raise ValueError("a sharded index takes new items at the next full training, not in a patch")
        items = _as_matrix(item_matrix, "item_matrix", self.dim)
        m = len(items)
        kind = self.meta["query_side"]
        if kind in ("codes", "float16") and (query_matrix is None or len(query_matrix) != m):
            raise ValueError(f"this index has a query side: give the {m} new rows' query vectors")

        def copy(index):
            return faiss.deserialize_index(faiss.serialize_index(index))

        positions, width = self._positions, int(self.meta["padded_dim"])
        placed = np.ascontiguousarray(_place(items, positions, width))
        candidates = copy(self.candidates)
        if self._ivf is not None:
            candidates.add_with_ids(placed, np.arange(self.n_items, self.n_items + m, dtype=np.int64))
        else:
            candidates.add(placed)
        rerank = None
        if self.rerank is not None:
            rerank = copy(self.rerank)
            rerank.add(placed)
        prior_exact = (None if self.prior_exact is None else
                       np.concatenate([self.prior_exact, items[:, self.dim - 1].astype(np.float16)]))
        meta = json.loads(json.dumps(self.meta))
        meta["n_items"] = self.n_items + m
        meta["added_rows"] = int(meta.get("added_rows", 0)) + m
        extended = SimilarityIndex(candidates, rerank, self.queries, self.query_half, meta, prior_exact,
                                   self.query_map)
        body = self.meta["query_columns"]
        if kind == "float16":
            query = _as_matrix(query_matrix, "query_matrix", self.dim)
            extended.query_half = np.concatenate([self.query_half, query[:, body].astype(np.float16)])
        elif kind == "codes":
            query = _as_matrix(query_matrix, "query_matrix", self.dim)
            target = np.ascontiguousarray(query[:, body])
            if self.query_map is not None:  # the residual over what the new rows' decoded codes predict
                want = int(self.meta.get("query_basis_dim", 0))
                if want and (query_basis is None or np.shape(query_basis) != (m, want)):
                    raise ValueError(f"this index's query side needs basis rows of shape ({m}, {want})")
                basis = _as_matrix(query_basis, "query_basis") if want else None
                decoded = extended.candidate_vectors(np.arange(self.n_items, self.n_items + m))
                target = np.ascontiguousarray(target - _predictors(decoded, basis) @ self.query_map)
            extended.queries = copy(self.queries)
            extended.queries.add(target)
        return extended

    # -- sizes ---------------------------------------------------------------------
    def size_breakdown(self) -> dict:
        """Serialized bytes of each part, and the total per item."""
        sizes = {"candidate_bytes": _index_bytes(self.candidates),
                 "rerank_bytes": _index_bytes(self.rerank) if self.rerank is not None else 0,
                 "query_bytes": (_index_bytes(self.queries) if self.queries is not None
                                 else self.query_half.nbytes if self.query_half is not None else 0)
                 + (self.query_map.nbytes if self.query_map is not None else 0),
                 "prior_bytes": self.prior_exact.nbytes if self.prior_exact is not None else 0}
        total = sum(sizes.values())
        return {**sizes, "total_bytes": total, "bytes_per_item": total / self.n_items}

    @property
    def bytes_per_item(self) -> float:
        return float(self.meta["stats"]["bytes_per_item"])

    @property
    def stats(self) -> dict:
        return dict(self.meta["stats"])

    # -- vectors ---------------------------------------------------------------------
    def _check_rows(self, rows, name: str) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"{name} must be integer item rows, got dtype {rows.dtype}")
        rows = rows.astype(np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_items):
            raise ValueError(f"{name} must be in 0..{self.n_items - 1}")
        return rows

    def query_vectors(self, item_indices, basis: np.ndarray | None = None) -> np.ndarray:
        """Decoded query-side vectors (m, dim) of indexed items ("similar to item X").

        basis: the rows' query_basis vectors (m, b), for an index built with one.
        """
        rows = self._check_rows(item_indices, "item_indices")
        kind = self.meta["query_side"]
        if kind == "none":
            raise ValueError("this index was built without a query side (query_matrix=None)")
        if kind == "candidates":
            return self.candidate_vectors(rows)
        out = np.zeros((len(rows), self.dim), np.float32)
        for column, value in self.meta["query_constants"].items():
            out[:, int(column)] = value
        body = self.meta["query_columns"]
        if kind == "float16":
            out[:, body] = self.query_half[rows]
        elif kind == "codes":
            out[:, body] = _decode(self.queries, rows)[:, :len(body)]
            if self.query_map is not None:
                want = int(self.meta.get("query_basis_dim", 0))
                if want and (basis is None or np.shape(basis) != (len(rows), want)):
                    raise ValueError(f"this index's query side needs basis rows of shape ({len(rows)}, {want}) "
                                     f"(the query_basis it was built with), got "
                                     f"{None if basis is None else np.shape(basis)}")
                predictors = _predictors(self.candidate_vectors(rows), _as_matrix(basis, "basis") if want else None)
                out[:, body] += predictors @ self.query_map
        return out

    def candidate_vectors(self, item_indices=None) -> np.ndarray:
        """Decoded candidate vectors (finest stored codes, the exact prior): all items, or the given rows."""
        table = self._whole_table()
        if table is not None:
            return table if item_indices is None else table[self._check_rows(item_indices, "item_indices")]
        if item_indices is None:
            return _decoded_candidates(self.candidates, self.rerank, self._positions, self.prior_exact, self.dim)
        codec = self.rerank if self.rerank is not None else self.candidates
        rows = self._check_rows(item_indices, "item_indices")
        out = _decode(codec, rows)[:, self._positions]
        if self.prior_exact is not None:
            out[:, self.dim - 1] = self.prior_exact[rows].astype(np.float32)
        return out

    def _whole_table(self) -> np.ndarray | None:
        """Every candidate decoded, kept in memory: when it fits decoded_cache_bytes, and always for IVF
        codes, which decode only list by list (4 * dim bytes an item: 165 MB at 633k items, dim 65)."""
        if self._decoded is None and self._keeps_whole_table():
            # one reference assignment: safe under threads
            self._decoded = _decoded_candidates(self.candidates, self.rerank, self._positions, self.prior_exact,
                                                self.dim)
        return self._decoded

    def _keeps_whole_table(self) -> bool:
        codec = self.rerank if self.rerank is not None else self.candidates
        return self.n_items * self.dim * 4 <= self.config.decoded_cache_bytes or _ivf(codec) is not None

    # -- search ----------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores float32, ids int64), each (q, k); ids -1 / score -inf only past the allowed items.

        allowed: bool per item (None = all); exclude: item rows never returned,
        1-d for every query or 2-d (q, m) per query (-1 = padding).
        """
        q = _as_matrix(queries, "queries", self.dim)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        mask, per_row = self._filters(allowed, exclude, len(q))
        n_ok = self.n_items if mask is None else int(mask.sum())
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        if n_ok == 0 or len(q) == 0:
            return out_s, out_i
        # room for the per-query exclusions: they are dropped after the search
        want = min(n_ok, k + (per_row.shape[1] if per_row is not None else 0))
        if mask is not None and n_ok <= self.config.exact_fallback_max:
            scores, ids = self._exact_subset(q, np.flatnonzero(mask), want)
        else:
            pool = min(n_ok, want * self.config.k_factor) if self._two_stage else want
            scores, ids = self._first_stage(q, pool, mask, n_ok)
            if self._two_stage:
                scores = self._rescore(q, ids)
            scores, ids = _top_k(scores, ids, want)
        if per_row is not None:
            drop = (ids[:, :, None] == per_row[:, None, :]).any(2)
            scores, ids = np.where(drop, -np.inf, scores), np.where(drop, -1, ids)
            scores, ids = _front_valid(scores, ids, ids >= 0)
        take = min(k, ids.shape[1])
        out_s[:, :take], out_i[:, :take] = scores[:, :take], ids[:, :take]
        out_s[out_i < 0] = -np.inf
        return out_s, out_i

    def candidate_pool(self, queries: np.ndarray, n: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """(q, n) ids of each query's `n` best allowed candidates by the first stage alone (-1 past the
        allowed ones): a pool the caller re-scores itself (`score_candidates`), so it is not re-scored here."""
        q = _as_matrix(queries, "queries", self.dim)
        mask, _ = self._filters(allowed, None, len(q))
        n_ok = self.n_items if mask is None else int(mask.sum())
        n = max(1, min(int(n), self.n_items))
        out = np.full((len(q), n), -1, np.int64)
        if n_ok == 0 or len(q) == 0:
            return out
        take = min(n, n_ok)
        if mask is not None and n_ok <= self.config.exact_fallback_max:
            _, ids = self._exact_subset(q, np.flatnonzero(mask), take)
        else:
            _, ids = self._first_stage(q, take, mask, n_ok)
        out[:, :ids.shape[1]] = ids
        return out

    def score_candidates(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(q, m) inner products of each query with its candidate rows (-1 = none: -inf), from the decoded
        codes: what `search` re-scores its pool with."""
        q = _as_matrix(queries, "queries", self.dim)
        ids = np.asarray(ids, np.int64)
        if ids.shape[0] != len(q) or ids.ndim != 2:
            raise ValueError(f"ids must be (n_queries, m), got shape {ids.shape} for {len(q)} queries")
        if ids.size and (ids.min() < -1 or ids.max() >= self.n_items):
            raise ValueError(f"ids must be in 0..{self.n_items - 1} (or -1 as padding)")
        return self._rescore(q, ids)

    def _filters(self, allowed, exclude, n_queries: int):
        mask = None
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.n_items,):
                raise ValueError(f"allowed must be a bool array of shape ({self.n_items},), "
                                 f"got {allowed.dtype} {allowed.shape}")
            mask = allowed.copy()
        per_row = None
        if exclude is not None:
            exclude = np.asarray(exclude)
            if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
                raise ValueError(f"exclude must hold integer item rows, got dtype {exclude.dtype}")
            exclude = exclude.astype(np.int64)
            if exclude.size and (exclude.min() < -1 or exclude.max() >= self.n_items):
                raise ValueError(f"exclude rows must be in 0..{self.n_items - 1} (or -1 as padding)")
            if exclude.ndim == 1:
                mask = np.ones(self.n_items, bool) if mask is None else mask
                mask[exclude[exclude >= 0]] = False
            elif exclude.ndim == 2 and len(exclude) == n_queries:
                per_row = exclude
            else:
                raise ValueError(f"exclude must be 1-d, or 2-d with one row per query ({n_queries}), "
                                 f"got shape {exclude.shape}")
        return mask, per_row

    def _exact_subset(self, q: np.ndarray, rows: np.ndarray, want: int):
        """Scores against every allowed item from its decoded codes (small allowed sets)."""
        scores = (q @ self.candidate_vectors(rows).T).astype(np.float32)
        return _top_k(scores, np.broadcast_to(rows, scores.shape).copy(), want)

    def _first_stage(self, q: np.ndarray, pool: int, mask: np.ndarray | None, n_ok: int):
        """`pool` best allowed candidates per query (ids -1 / -inf past the allowed ones).

        IVF widens nprobe and the over-fetch (for indexes that take no
        IDSelector) doubles until every row has `pool` allowed candidates or
        the search was exhaustive.
        """
        q = _place(q, self._positions, int(self.meta["padded_dim"]))
        bitmap = selector = None
        if mask is not None and self._selector_ok:
            bitmap = np.packbits(mask, bitorder="little")  # must outlive the searches below
            selector = faiss.IDSelectorBitmap(self.n_items, faiss.swig_ptr(bitmap))
        nlist = self._ivf.nlist if self._ivf is not None else 1
        nprobe = min(self.config.nprobe, nlist)
        over_fetch = mask is not None and selector is None
        fetch = min(self.n_items, int(math.ceil(pool * self.n_items / n_ok * 1.2)) + 16) if over_fetch else pool
        while True:
            if self._ivf is not None:
                params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
            elif selector is not None:
                params = faiss.SearchParameters(sel=selector)
            else:
                params = None
            scores, ids = self.candidates.search(q, fetch, params=params)
            valid = ids >= 0
            if over_fetch:
                valid &= mask[np.maximum(ids, 0)]
            scores, ids = _front_valid(np.where(valid, scores, -np.inf), np.where(valid, ids, -1), valid)
            exhaustive = nprobe >= nlist and (not over_fetch or fetch >= self.n_items)
            if (ids[:, :pool] >= 0).all() or exhaustive:
                return scores[:, :pool], ids[:, :pool]
            nprobe = min(nlist, nprobe * 4)
            if over_fetch:
                fetch = min(self.n_items, fetch * 2)

    def _rescore(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Scores of the pool from the decoded codes (finer ones when there is a rerank codec)."""
        table = self._whole_table()
        if table is not None:  # the whole table is decoded: gather directly
            # in blocks of queries: one gather of a whole batch (1,000 x 200 rows x 65 floats, 52 MB) spent
            # more time faulting in fresh pages than scoring; a block's buffer is reused by the allocator
            scores = np.empty(ids.shape, np.float32)
            safe = np.maximum(ids, 0)
            for start in range(0, len(q), RESCORE_BLOCK):
                stop = start + RESCORE_BLOCK
                scores[start:stop] = np.matmul(table[safe[start:stop]], q[start:stop, :, None])[:, :, 0]
            return np.where(ids >= 0, scores, np.float32(-np.inf))
        rows = np.unique(ids[ids >= 0])
        if len(rows) == 0:
            return np.full(ids.shape, -np.inf, np.float32)
        decoded = self.candidate_vectors(rows)
        where = np.minimum(np.searchsorted(rows, np.maximum(ids, 0)), len(rows) - 1)
        scores = np.einsum("qd,qkd->qk", q, decoded[where])
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32)

    # -- files -----------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """FAISS binary files + index.json (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(self.candidates, ShardedCodes):
            self.candidates.save(folder)
        else:
            faiss.write_index(self.candidates, str(folder / CANDIDATE_FILE))
        if self.rerank is not None:
            faiss.write_index(self.rerank, str(folder / RERANK_FILE))
        if self.queries is not None:
            faiss.write_index(self.queries, str(folder / QUERY_FILE))
        if self.query_half is not None:
            np.save(folder / HALF_FILE, self.query_half, allow_pickle=False)
        if self.prior_exact is not None:
            np.save(folder / PRIOR_FILE, self.prior_exact, allow_pickle=False)
        if self.query_map is not None:
            np.save(folder / QUERY_MAP_FILE, self.query_map, allow_pickle=False)
        (folder / META_FILE).write_text(json.dumps(_json_safe(self.meta), indent=2, sort_keys=True))

    @classmethod
    def load(cls, folder: str | Path) -> "SimilarityIndex":
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise ValueError(f"{folder} holds no {META_FILE}: not a saved SimilarityIndex")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{meta_path}: index format {meta.get('format_version')!r}, "
                             f"this code reads {INDEX_FORMAT_VERSION}")
        if meta.get("shard_bounds"):
            candidates = ShardedCodes.load(folder, meta["shard_bounds"])
        else:
            candidates = faiss.read_index(str(folder / CANDIDATE_FILE))
        rerank = faiss.read_index(str(folder / RERANK_FILE)) if meta["config"].get("rerank") else None
        queries = faiss.read_index(str(folder / QUERY_FILE)) if meta["query_side"] == "codes" else None
        half = np.load(folder / HALF_FILE, allow_pickle=False) if meta["query_side"] == "float16" else None
        prior = np.load(folder / PRIOR_FILE, allow_pickle=False) if meta.get("prior_exact") else None
        query_map = np.load(folder / QUERY_MAP_FILE, allow_pickle=False) if meta.get("query_residual") else None
        if candidates.ntotal != meta["n_items"]:
            raise ValueError(f"{folder / CANDIDATE_FILE} holds {candidates.ntotal} items, index.json says "
                             f"{meta['n_items']}")
        return cls(candidates, rerank, queries, half, meta, prior, query_map)


def measure_recall(index: SimilarityIndex, item_matrix: np.ndarray, queries: np.ndarray, k: int = 10,
                   truth_queries: np.ndarray | None = None) -> float:
    """Mean share of the exact inner-product top k that the index returns in its top k.

    truth_queries: the exact vectors `queries` approximate (default: the same),
    to include the loss of a coded query side.
    """
    queries = _as_matrix(queries, "queries")
    if len(queries) == 0:
        raise ValueError("measure_recall needs at least one query")
    truth_queries = queries if truth_queries is None else _as_matrix(truth_queries, "truth_queries", queries.shape[1])
    if len(truth_queries) != len(queries):
        raise ValueError(f"truth_queries has {len(truth_queries)} rows, queries {len(queries)}")
    _, truth = exact_search(item_matrix, truth_queries, k)
    _, found = index.search(queries, k)
    hits = [len(np.intersect1d(t[t >= 0], f[f >= 0])) / max(1, int((t >= 0).sum())) for t, f in zip(truth, found)]
    return float(np.mean(hits))


def build_scorer_indexes(item_vectors: np.ndarray, context_vectors: np.ndarray, log_pop: np.ndarray,
                         cold_vectors: Callable[[], np.ndarray], warm_scorer: Scorer, cold_scorer: Scorer,
                         config: IndexConfig | None = None, index_class=None,
                         fill_shards=None) -> dict[str, "SimilarityIndex"]:
    """The indexes a version serves: "warm", and "cold" only when the cold scorer ranks other candidates.

    Warm queries are the indexed items' own vectors; cold queries their
    side-feature vectors (`cold_vectors()`), scored at query time. Scorers of
    one family (inout with any popularity weight: the weight is on the query
    side) share the warm index's candidate codes, so a second copy is built
    only for another family. The side-feature vectors are also the warm query
    side's basis: callers pass their rows to `query_vectors(rows, basis=...)`.
    All arrays hold the indexed items only, in index order.
    """
    index_class = index_class or SimilarityIndex
    side = np.asarray(cold_vectors(), np.float32)
    indexes = {"warm": index_class.build(warm_scorer.item_matrix(item_vectors, context_vectors, log_pop),
                                         warm_scorer.query_matrix(item_vectors), config, query_basis=side,
                                         fill_shards=fill_shards)}
    if cold_scorer.candidate_key != warm_scorer.candidate_key:
        indexes["cold"] = index_class.build(cold_scorer.item_matrix(item_vectors, context_vectors, log_pop),
                                            cold_scorer.query_matrix(side), config, fill_shards=fill_shards)
    return indexes
