"""The maths that training, evaluation and serving share, written once, in numpy.

Serving imports this module and never torch: what a trained model means
(how attention mixes an item's components, what vector a brand-new item
gets, how a scorer turns vectors into an inner product) is defined here,
and the training code (`recsys/embed/`) calls the same functions on its
results. Gensim's split between training and `KeyedVectors` is the model.

* price tiers: quantile edges of the known prices and each price's tier;
* attention: softmax of an item's logits over the components it has;
* cold start: the vector of an item known only by its side features;
* scorers: the candidate and query sides of the inner product that ranks;
* log-popularity and unit rows, which several of these use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ID_FEATURE = "item_id"  # name of the id component in attention weights
PRICE_TIER = "price_tier"  # the side feature derived from the price
SCORER_KINDS = ("cosine", "dot", "inout", "inout_prior")


# --------------------------------------------------------------------------- price tiers
def price_tier_edges(price: np.ndarray, n_tiers: int) -> np.ndarray:
    """Inner quantile edges of the known prices (at most n_tiers - 1 of them).

    Duplicate edges (many items at one price) collapse, so there can be fewer
    tiers than asked; stored with the model so new items get the same tiers.
    """
    if n_tiers < 1:
        raise ValueError(f"n_tiers must be >= 1, got {n_tiers}")
    known = np.asarray(price, dtype=np.float64)
    known = known[np.isfinite(known)]
    if len(known) == 0 or n_tiers == 1:
        return np.zeros(0, dtype=np.float64)
    edges = np.quantile(known, np.arange(1, n_tiers) / n_tiers)
    return np.unique(edges)


def price_tier_codes(price, edges: np.ndarray) -> np.ndarray:
    """Tier code per price: 0 = unknown (NaN/inf), else 1..len(edges)+1."""
    price = np.atleast_1d(np.asarray(price, dtype=np.float64))
    codes = np.searchsorted(edges, price, side="right").astype(np.int64) + 1
    codes[~np.isfinite(price)] = 0
    return codes


# --------------------------------------------------------------------------- attention
def attention_weights(logits: np.ndarray, feature_codes: np.ndarray) -> np.ndarray:
    """softmax(a_v) per item over the components it has: the id (always) and non-missing features.

    logits (n, 1 + F), feature_codes (n, F) with 0 = missing -> (n, 1 + F) float32.
    """
    feature_codes = np.asarray(feature_codes)
    present = np.concatenate([np.ones((len(feature_codes), 1), bool), feature_codes > 0], axis=1)
    masked = np.where(present, np.asarray(logits, dtype=np.float64), -np.inf)
    masked -= masked.max(axis=1, keepdims=True)
    w = np.exp(masked)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- cold start
def side_parts(side_tables: Sequence[np.ndarray], codes: np.ndarray, dim: int) -> np.ndarray:
    """(B, F, dim): each item's row of each side-feature table (row 0 = missing = zeros)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    if not len(side_tables):
        return np.zeros((len(codes), 0, dim), np.float32)
    return np.stack([table[codes[:, j]] for j, table in enumerate(side_tables)], axis=1)


def cold_start_vectors(side_tables: Sequence[np.ndarray], codes: np.ndarray, dim: int,
                       cold_map: np.ndarray | None = None) -> np.ndarray:
    """Vectors, in the trained item vectors' space, of items known only by side-feature codes.

    The paper's cold start (EGES section 2.4): the average of the present
    side-feature embeddings (what `id_dropout` training prepares for); with
    `cold_map` (the "ridge" strategy) a linear map [side rows, 1] -> H_v fitted
    on warm items instead. No known feature (or no tables) gives the zero vector.
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), -1)
    parts = side_parts(side_tables, codes, dim)
    if parts.shape[1] == 0:
        return np.zeros((len(codes), dim), np.float32)
    if cold_map is not None:
        x = np.concatenate([parts.reshape(len(codes), -1), np.ones((len(codes), 1), np.float32)], axis=1)
        return (x @ cold_map).astype(np.float32)
    present = (codes > 0)[..., None]
    return ((parts * present).sum(1) / np.maximum(present.sum(1), 1)).astype(np.float32)


def clean_value(value) -> str | None:
    """A raw side-feature value as the vocabularies hold it; None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text != "" else None


# --------------------------------------------------------------------------- scoring
def unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


def log_popularity(purchase_item: np.ndarray, n_items: int) -> np.ndarray:
    """log(1 + training purchase lines) per item: the popularity prior of `inout_prior`."""
    counts = np.bincount(np.asarray(purchase_item, dtype=np.int64), minlength=n_items)
    return np.log1p(counts).astype(np.float32)


@dataclass(frozen=True)
class Scorer:
    """How a query vector ranks candidates, always as one inner product <query, candidate>.

    * "cosine" / "dot": the query item's H against every item's H;
    * "inout": H of the query against the context ("output") table, the
      quantity skip-gram training optimises;
    * "inout_prior": that plus beta * log(1 + popularity): query [q, beta]
      against candidates [c_b, log(1 + pop_b)], so maximum-inner-product
      search (the FAISS index) serves it unchanged.

    The popularity weight sits on the query side, so every scorer of the inout
    family ranks against the very same candidate matrix: warm and cold queries
    with different betas share one index (`candidate_key`). Bundles of formats
    1 and 2 put beta on the candidate side instead (`legacy_query_matrix`).
    """

    kind: str
    beta: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCORER_KINDS:
            raise ValueError(f"scorer must be one of {SCORER_KINDS}, got {self.kind!r}")

    @classmethod
    def from_dict(cls, spec: dict) -> "Scorer":
        return cls(str(spec["kind"]), float(spec.get("beta", 0.0)))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "beta": self.beta}

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.beta:g}"

    @property
    def candidate_key(self) -> str:
        """Scorers with equal keys rank against the same candidate matrix (one index serves them all)."""
        return "inout" if self.kind in ("inout", "inout_prior") else self.kind

    @property
    def prior_weight(self) -> float:
        return self.beta if self.kind == "inout_prior" else 0.0

    def item_matrix(self, item_vectors: np.ndarray, context_vectors: np.ndarray,
                    log_pop: np.ndarray) -> np.ndarray:
        """(n_items, dim [+1]) candidate side of the inner product."""
        if self.kind == "cosine":
            return unit_rows(item_vectors)
        if self.kind == "dot":
            return np.asarray(item_vectors, np.float32)
        return np.concatenate([context_vectors, np.asarray(log_pop, np.float32)[:, None]], axis=1)

    def query_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """(B, dim [+1]) query side for item vectors (trained or cold-start)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.kind == "cosine":
            return unit_rows(vectors)
        if self.kind == "dot":
            return vectors
        return np.concatenate([vectors, np.full((len(vectors), 1), self.prior_weight, np.float32)], axis=1)

    def legacy_query_matrix(self, vectors: np.ndarray) -> np.ndarray:
        """The query side of bundle formats 1 and 2, whose candidates were [c_b, beta log(1 + pop_b)]."""
        if self.candidate_key != "inout":
            return self.query_matrix(vectors)
        vectors = np.asarray(vectors, dtype=np.float32)
        return np.concatenate([vectors, np.ones((len(vectors), 1), np.float32)], axis=1)
