"""EGES (and its GES / BGE variants) behind the evaluation protocol's Recommender interface.

fit(train): baskets -> item graph -> walks -> embeddings (`recsys/embed/`),
then the scorer that ranks with them. How the scorer is chosen is
`ScorerConfig`: when it leaves a choice (the scorer kind, or the popularity
weight beta), the last `validation_fraction` of the training purchases is
held out first, the model trained on the rest, each candidate measured on
Recall@20 there (warm and cold separately), and then the model is retrained
on the whole training period (`refit`). The test period is never looked at.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recsys.data.dataset import Dataset
from recsys.data.graph import GraphConfig, ItemGraph, build_item_graph
from recsys.data.sessions import make_baskets
from recsys.embed.model import item_features
from recsys.embed.distributed import train_data_parallel, train_on_torchrun
from recsys.embed.train import TrainConfig, train_embeddings
from recsys.embed.trained import TrainedModel
from recsys.evaluation.metrics import score_query_variants
from recsys.evaluation.protocol import EvalConfig, PreparedEvaluation, prepare
from recsys.vectors import SCORER_KINDS, Scorer, log_popularity

SCORER_SETTINGS = ("auto", *SCORER_KINDS)


@dataclass
class ScorerConfig:
    """How the recommender chooses the scorer that ranks candidates (`recsys.vectors.Scorer`)."""

    warm: str = "auto"  # "auto" picks on the validation split; or one of SCORER_KINDS
    prior_beta: float | None = None  # weight of log(popularity) for inout_prior; None = tune
    beta_grid: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
    # Cold start ranks with <q, c_b> + beta log pop_b by default: on Ta-Feng the cold validation
    # period preferred cosine (0.040 vs 0.033) but the test period did not (0.021 vs 0.056);
    # "auto" lets validation choose among all kinds for cold queries too.
    cold: str = "inout_prior"
    validation_fraction: float = 0.15  # last share of training purchases used to choose the scorer
    validation_queries: int = 3000
    refit: bool = True  # retrain on the whole training period after choosing on validation

    def validate(self) -> None:
        for name in ("warm", "cold"):
            if getattr(self, name) not in SCORER_SETTINGS:
                raise ValueError(f"ScorerConfig.{name} must be one of {SCORER_SETTINGS}, got {getattr(self, name)!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"ScorerConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}")

    def candidates(self) -> list[Scorer]:
        """The scorers validation chooses among (one when nothing is left to choose)."""
        if self.warm == "auto" or self.cold == "auto":
            kinds = ["cosine", "dot", "inout_prior"]
        else:
            kinds = list(dict.fromkeys([self.warm, self.cold]))
        out = []
        for kind in kinds:
            if kind == "inout_prior":
                betas = self.beta_grid if self.prior_beta is None else (self.prior_beta,)
                out += [Scorer(kind, float(b)) for b in betas]
            else:
                out.append(Scorer(kind))
        return out


def _allowed(scorer: Scorer, setting: str) -> bool:
    return setting == "auto" or scorer.kind == setting


class EGESRecommender:
    """A trained EGES/GES/BGE model and its chosen warm and cold scorers.

    train: the training run (mode, dim, epochs, ...); scoring: the scorer
    choice; graph: how baskets become the item graph; session_gap_s: how
    purchases without an order become baskets.
    """

    def __init__(self, train: TrainConfig | None = None, scoring: ScorerConfig | None = None, *,
                 mode: str | None = None, name: str | None = None, graph: GraphConfig | None = None,
                 session_gap_s: int = 3600, progress: bool = False, run_chunks=None, train_processes: int = 1,
                 rendezvous=None):
        train = train or TrainConfig()
        if mode is not None:
            train = dataclasses.replace(train, mode=mode)
        train.validate()
        self.scoring = scoring or ScorerConfig()
        self.scoring.validate()
        self.config = train
        self.name = name or train.mode.upper()
        self.graph_config = graph or GraphConfig()
        self.session_gap_s = session_gap_s
        self.progress = progress
        self.run_chunks = run_chunks  # where walk chunks run (None: here); recsys.data.walks.iter_walks
        self.train_processes = train_processes  # > 1: data-parallel ranks (recsys/embed/distributed.py)
        self.rendezvous = rendezvous  # with ranks on other machines too: torchrun (distributed.Rendezvous)
        self.trained: TrainedModel | None = None
        self.warm_scorer: Scorer | None = None
        self.cold_scorer: Scorer | None = None
        self.validation: dict = {}
        # (the validation split, the model trained without its tail): what later choices are fitted on
        self.validation_fit: tuple[PreparedEvaluation, TrainedModel] | None = None

    # -- training ------------------------------------------------------------
    def _train(self, ds: Dataset) -> TrainedModel:
        graph = build_item_graph(ds, make_baskets(ds, self.session_gap_s), self.graph_config)
        if self.rendezvous is not None and self.config.resolved_engine() == "numba":
            return train_on_torchrun(ds, graph, self.config, self.train_processes, self.rendezvous,
                                     run_chunks=self.run_chunks)
        if self.train_processes > 1 and self.config.resolved_engine() == "numba":
            return train_data_parallel(ds, graph, self.config, self.train_processes, run_chunks=self.run_chunks)
        return train_embeddings(ds, graph, self.config, progress=self.progress, run_chunks=self.run_chunks)

    def embed_graph(self, ds: Dataset, graph: ItemGraph) -> np.ndarray:
        """Item vectors trained on a given graph (link-prediction AUC)."""
        return train_embeddings(ds, graph, self.config, progress=self.progress, run_chunks=self.run_chunks).item_vectors

    def fit(self, train: Dataset) -> None:
        candidates = self.scoring.candidates()
        self.warm_scorer = next(c for c in candidates if _allowed(c, self.scoring.warm))
        self.cold_scorer = next(c for c in candidates if _allowed(c, self.scoring.cold))
        self.trained, self.validation, self.validation_fit = None, {}, None
        if len(candidates) > 1 and self.scoring.validation_fraction > 0:
            trained_on_part = self._choose_scorers(train, candidates)
            if not self.scoring.refit:
                self.trained = trained_on_part
        if self.trained is None:
            self.trained = self._train(train)
        self._finish_fit(train)

    def fit_with_scorers(self, train: Dataset, warm_scorer: Scorer, cold_scorer: Scorer | None = None) -> None:
        """Train once with scorers already chosen (e.g. by an earlier fit's validation): no validation split."""
        self.warm_scorer, self.cold_scorer = warm_scorer, cold_scorer or warm_scorer
        self.validation = {"reused": True, "warm_scorer": self.warm_scorer.to_dict(),
                           "cold_scorer": self.cold_scorer.to_dict()}
        self.trained = self._train(train)
        self._finish_fit(train)

    def _finish_fit(self, train: Dataset) -> None:
        self.log_popularity = log_popularity(train.purchase_item, train.n_items)
        self._cold_codes = item_features(train, self.config.n_price_tiers).codes
        self._warm_items = self.item_matrix(self.warm_scorer, self.log_popularity)
        self._cold_items = self.item_matrix(self.cold_scorer, self.log_popularity)

    def item_matrix(self, scorer: Scorer, log_pop: np.ndarray) -> np.ndarray:
        """The candidate side of `scorer` for this model's items."""
        return scorer.item_matrix(self.trained.item_vectors, self.trained.context_vectors, log_pop)

    def cold_queries(self, anchors: np.ndarray) -> np.ndarray:
        """Cold-start vectors of these items, from their side features alone."""
        trained = self._check_fitted()
        return trained.cold_vectors_from_codes(self._cold_codes[anchors][:, :len(trained.feature_names)])

    def validation_config(self) -> EvalConfig:
        """The protocol on the last `validation_fraction` of the training period (never the test period)."""
        return EvalConfig(test_fraction=self.scoring.validation_fraction or 0.15, session_gap_s=self.session_gap_s,
                          max_queries=self.scoring.validation_queries, seed=self.config.seed,
                          include_link_prediction=False)

    def validation_state(self, train: Dataset) -> tuple[PreparedEvaluation, TrainedModel]:
        """(validation split of `train`, the model trained on the part before its tail), trained if needed."""
        if self.validation_fit is None or self.validation_fit[0].split.train.n_items != train.n_items:
            prep = prepare(train, self.validation_config())
            self.validation_fit = (prep, self._train(prep.split.train))
        return self.validation_fit

    def _choose_scorers(self, train: Dataset, candidates: list[Scorer]) -> TrainedModel:
        """Pick the warm and cold scorers on a validation tail; returns the model trained without it."""
        self.validation_fit = None
        prep, trained = self.validation_state(train)
        log_pop = np.log1p(prep.popularity).astype(np.float32)
        codes = trained.item_feature_codes
        results: dict[str, dict[str, float]] = {"warm": {}, "cold": {}}
        # one pass over the queries per query/candidate matrix pair: the popularity weights of
        # inout_prior only add beta * log_pop to the same inner product
        groups: dict[str, list[Scorer]] = {}
        for scorer in candidates:
            groups.setdefault("inout" if scorer.kind in ("inout", "inout_prior") else scorer.kind, []).append(scorer)
        for group, scorers in groups.items():
            first = Scorer("inout" if group == "inout" else scorers[0].kind)
            items = first.item_matrix(trained.item_vectors, trained.context_vectors, log_pop)
            warm_fn = lambda a, s=first, m=items: s.query_matrix(trained.item_vectors[a]) @ m.T
            cold_fn = lambda a, s=first, m=items: s.query_matrix(trained.cold_vectors_from_codes(codes[a])) @ m.T
            variants = {s.key: (None if s.kind != "inout_prior" or s.beta == 0 else
                                (lambda raw, b=s.beta: raw + b * log_pop)) for s in scorers}
            for segment, fn, queries, mask in (("warm", warm_fn, prep.warm_queries, True),
                                               ("cold", cold_fn, prep.cold_queries, False)):
                if queries.n_queries:
                    metrics = score_query_variants(fn, variants, queries, prep.columns, train.n_items, (20,),
                                                   mask_anchor=mask, name=self.name)
                    for key, m in metrics.items():
                        results[segment][key] = m.recall[20]
        by_key = {s.key: s for s in candidates}
        warm_keys = [k for k in results["warm"] if _allowed(by_key[k], self.scoring.warm)]
        if warm_keys:
            self.warm_scorer = by_key[max(warm_keys, key=results["warm"].get)]
        # Cold queries choose among the kinds ScorerConfig.cold allows; with too few
        # cold validation queries the warm results pick among those instead.
        source = results["cold"] if prep.cold_queries.n_queries >= 30 else results["warm"]
        cold_keys = [k for k in source if _allowed(by_key[k], self.scoring.cold)]
        if cold_keys:
            self.cold_scorer = by_key[max(cold_keys, key=source.get)]
        self.validation = {"recall@20": results, "warm_scorer": self.warm_scorer.to_dict(),
                           "cold_scorer": self.cold_scorer.to_dict(),
                           "n_warm_queries": prep.warm_queries.n_queries,
                           "n_cold_queries": prep.cold_queries.n_queries}
        return trained

    # -- scoring ---------------------------------------------------------------
    def _check_fitted(self) -> TrainedModel:
        if self.trained is None:
            raise ValueError(f"{self.name}: call fit(train) before scoring")
        return self.trained

    def score_warm(self, anchors: np.ndarray) -> np.ndarray:
        trained = self._check_fitted()
        anchors = np.asarray(anchors, dtype=np.int64)
        return (self.warm_scorer.query_matrix(trained.item_vectors[anchors]) @ self._warm_items.T).astype(np.float32)

    def score_cold(self, anchors: np.ndarray) -> np.ndarray:
        self._check_fitted()
        query = self.cold_queries(np.asarray(anchors, dtype=np.int64))
        return (self.cold_scorer.query_matrix(query) @ self._cold_items.T).astype(np.float32)
