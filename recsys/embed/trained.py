"""A trained EGES model as plain numpy arrays: the result of training, apart from the training code.

Like gensim's `KeyedVectors`, this holds what training produced and answers
questions about it (attention weights, cold-start vectors) through the shared
maths of `recsys/vectors.py`, without torch. `to_arrays` gives flat arrays for
.npy/.npz files: nothing here needs pickle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.vectors import PRICE_TIER, attention_weights, cold_start_vectors, price_tier_codes, side_parts


@dataclass
class TrainedModel:
    """A trained EGES model as plain numpy arrays (no pickle needed to store it)."""

    item_vectors: np.ndarray  # (n_items, dim) float32: H_v
    context_vectors: np.ndarray  # (n_items, dim) float32: the output table
    id_embeddings: np.ndarray  # (n_items, dim) float32: W^0
    side_tables: dict[str, np.ndarray]  # feature name -> (cardinality, dim), row 0 = missing (zeros)
    feature_names: list[str]  # side features in table order
    feature_values: dict[str, list[str]]  # vocabulary of each side feature
    item_feature_codes: np.ndarray  # (n_items, n_features) int64
    price_tier_edges: np.ndarray  # float64 inner quantile edges
    attention_logits: np.ndarray  # (n_items, 1 + n_features) float32: a_v
    item_counts: np.ndarray  # (n_items,) walk-node counts the noise was drawn from
    loss_history: np.ndarray  # mean loss per pair, one entry per step
    config: dict
    stats: dict = field(default_factory=dict)  # pairs, seconds, pairs_per_s
    cold_map: np.ndarray | None = None  # (n_features * dim + 1, dim) for cold_start == "ridge"

    @property
    def dim(self) -> int:
        return self.item_vectors.shape[1]

    @property
    def tables_in_order(self) -> list[np.ndarray]:
        """The side-feature tables in code-column order (none for a bge model)."""
        if self.config.get("mode") == "bge":
            return []
        return [self.side_tables[name] for name in self.feature_names]

    def attention_weights(self) -> np.ndarray:
        """softmax(a_v) per item over its present components (id first)."""
        return attention_weights(self.attention_logits, self.item_feature_codes)

    def feature_codes_for(self, category_codes=None, brand_codes=None, price=None,
                          extra_codes: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(B, n_features) codes in this model's table order; absent inputs = missing."""
        given = {"category": category_codes, "brand": brand_codes, **(extra_codes or {})}
        if price is not None:
            given[PRICE_TIER] = price_tier_codes(price, self.price_tier_edges)
        sizes = {len(np.atleast_1d(v)) for v in given.values() if v is not None}
        if len(sizes) > 1:
            raise ValueError(f"cold-start inputs differ in length: {sorted(sizes)}")
        n = sizes.pop() if sizes else 0
        codes = np.zeros((n, len(self.feature_names)), dtype=np.int64)
        for j, name in enumerate(self.feature_names):
            if given.get(name) is not None:
                col = np.atleast_1d(np.asarray(given[name], dtype=np.int64))
                card = len(self.feature_values[name])
                if col.min(initial=0) < 0 or col.max(initial=0) >= card:
                    raise ValueError(f"{name} codes must be in 0..{card - 1}")
                codes[:, j] = col
        return codes

    def cold_start_vectors(self, category_codes=None, brand_codes=None, price=None,
                           extra_codes: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Vectors (in item_vectors' space) for items known only by side features (`vectors.cold_start_vectors`)."""
        codes = self.feature_codes_for(category_codes, brand_codes, price, extra_codes)
        return self.cold_vectors_from_codes(codes)

    def cold_vectors_from_codes(self, codes: np.ndarray) -> np.ndarray:
        cold_map = self.cold_map if self.config.get("cold_start") == "ridge" else None
        return cold_start_vectors(self.tables_in_order, codes, self.dim, cold_map)

    def side_parts(self, codes: np.ndarray) -> np.ndarray:
        """(B, F, dim) side-feature rows of the given codes."""
        return side_parts(self.tables_in_order, codes, self.dim)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name -> array mapping (for np.savez); vocabularies/config stay JSON-able in `config`."""
        out = {"item_vectors": self.item_vectors, "context_vectors": self.context_vectors,
               "id_embeddings": self.id_embeddings, "item_feature_codes": self.item_feature_codes,
               "price_tier_edges": self.price_tier_edges, "attention_logits": self.attention_logits,
               "item_counts": self.item_counts, "loss_history": self.loss_history}
        out.update({f"side_table.{k}": v for k, v in self.side_tables.items()})
        if self.cold_map is not None:
            out["cold_map"] = self.cold_map
        return out
