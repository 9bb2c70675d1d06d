"""EGES after product quantisation (the index that ships), behind the Recommender protocol."""
from __future__ import annotations

import numpy as np

from recsys.data.dataset import Dataset
from recsys.recommenders.eges import EGESRecommender
from recsys.serving.index import IndexConfig, SimilarityIndex, build_scorer_indexes
from recsys.vectors import log_popularity


class CompressedRecommender:
    """The served ranking of an EGES model: its indexes, built exactly as a published bundle builds them.

    fit(train) fits the base EGESRecommender unless it is already fitted (the
    evaluation shares one trained model between the EGES row and this one),
    then builds the indexes with `build_scorer_indexes`, the function the
    bundle uses (a second index only when the cold scorer differs).

    Scores are dense: every item's candidate codes are decoded once after
    fit, and a query (decoded from the coded query side for warm anchors, the
    exact side-feature vector for cold anchors) is scored against all of
    them. The evaluator needs full rankings (MRR, K up to 50). This is the
    ranking `search` returns after re-scoring its pool (the default; a test
    holds the two to 97% overlap at k=10); with IVF factories the dense
    scores skip the probing loss, which the index reports separately as
    stats["recall_at_10"].
    """

    def __init__(self, base_recommender: EGESRecommender, config: IndexConfig | None = None, name: str = "EGES+PQ"):
        self.base = base_recommender
        self.config = config or IndexConfig()
        self.config.validate()
        self.name = name
        self.warm_index: SimilarityIndex | None = None
        self.cold_index: SimilarityIndex | None = None

    def fit(self, train: Dataset) -> None:
        base = self.base
        if getattr(base, "trained", None) is None:
            base.fit(train)
        trained = base.trained
        if trained.item_vectors.shape[0] != train.n_items:
            raise ValueError(f"the base model has {trained.item_vectors.shape[0]} items, the training data "
                             f"{train.n_items}: it was fitted on another catalogue")
        all_items = np.arange(train.n_items)
        indexes = build_scorer_indexes(trained.item_vectors, trained.context_vectors,
                                       log_popularity(train.purchase_item, train.n_items),
                                       lambda: base.cold_queries(all_items), base.warm_scorer, base.cold_scorer,
                                       self.config)
        self.warm_index = indexes["warm"]
        self.cold_index = indexes.get("cold", self.warm_index)
        self._warm_candidates = self.warm_index.candidate_vectors()
        self._cold_candidates = (self._warm_candidates if self.cold_index is self.warm_index
                                 else self.cold_index.candidate_vectors())

    def _check_fitted(self) -> None:
        if self.warm_index is None:
            raise ValueError(f"{self.name}: call fit(train) before scoring")

    def score_warm(self, anchors: np.ndarray) -> np.ndarray:
        self._check_fitted()
        anchors = np.asarray(anchors, dtype=np.int64)
        query = self.warm_index.query_vectors(anchors, basis=self.base.cold_queries(anchors))
        return (query @ self._warm_candidates.T).astype(np.float32)

    def score_cold(self, anchors: np.ndarray) -> np.ndarray:
        self._check_fitted()
        query = self.base.cold_scorer.query_matrix(self.base.cold_queries(np.asarray(anchors, dtype=np.int64)))
        return (query @ self._cold_candidates.T).astype(np.float32)
