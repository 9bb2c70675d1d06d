"""Training EGES embeddings on random walks, and the recommenders built on them.

The loop is word2vec's skip-gram with negative sampling, batched for speed:

* walks come in batches from `recsys.walks.iter_walks`; (center, context)
  pairs of every walk batch are cut out with numpy (no per-pair Python);
* H is computed once per walk *position* (each is the center of up to
  2*window pairs) from rows gathered out of the tables; autograd runs only on
  these small gathered tensors, and the gradients go back into the tables
  with `index_add_` (row-wise Adagrad, as in PyTorch-BigGraph), so no step
  touches a whole table;
* noise items are drawn per center position (K of them) and count once for
  each of that center's pairs: the same K-negatives-per-pair objective as
  word2vec, with the noise shared between the pairs of one center.

`TrainedModel` holds numpy arrays only, so it can be written to .npy/.npz
files and shipped without pickle.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from recsys.dataset import Dataset
from recsys.model import EGES, ID_FEATURE, MODES, PRICE_TIER, ItemFeatures, NoiseSampler, aggregate, item_features, price_tier_codes

COLD_START_STRATEGIES = ("side_mean", "id_dropout", "ridge")
SCORERS = ("auto", "cosine", "dot", "inout", "inout_prior")


@dataclass
class TrainConfig:
    """Everything that decides a training run (and the recommender's scoring)."""

    mode: str = "eges"  # "bge" | "ges" | "eges"
    dim: int = 64
    walk_length: int = 10
    walks_per_node: int = 20
    window: int = 5
    dynamic_window: bool = True  # word2vec's shrunk windows: near neighbours count more
    negatives: int = 5
    noise_power: float = 0.75
    epochs: int = 1
    batch_size: int = 32768  # (center, context) pairs per step, about
    lr: float = 0.1  # row-wise Adagrad
    min_lr_fraction: float = 0.1  # linear decay to lr * this over the run
    seed: int = 0
    n_price_tiers: int = 10
    cold_start: str = "id_dropout"  # "side_mean" (paper) | "id_dropout" | "ridge"
    id_dropout: float = 0.25  # share of center positions trained without their id (id_dropout)
    ridge_alpha: float = 1.0  # regularisation of the "ridge" cold-start map
    device: str = "auto"  # "auto" = cuda when available, else cpu
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    # --- how the recommender scores candidates ---------------------------------
    scorer: str = "auto"  # "auto" picks on the validation split; or one of SCORERS[1:]
    prior_beta: float | None = None  # weight of log(popularity) for inout_prior; None = tune
    beta_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    validation_fraction: float = 0.15  # last share of training purchases used to choose the scorer
    validation_queries: int = 3000
    refit: bool = True  # retrain on the whole training period after choosing on validation

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.cold_start not in COLD_START_STRATEGIES:
            raise ValueError(f"TrainConfig.cold_start must be one of {COLD_START_STRATEGIES}, got {self.cold_start!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"TrainConfig.scorer must be one of {SCORERS}, got {self.scorer!r}")
        for name in ["dim", "walk_length", "walks_per_node", "window", "negatives", "epochs", "batch_size",
                     "n_price_tiers"]:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.walk_length < 2:
            raise ValueError(f"TrainConfig.walk_length must be >= 2, got {self.walk_length}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"TrainConfig.id_dropout must be in [0, 1), got {self.id_dropout}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"TrainConfig.validation_fraction must be in [0, 1), got {self.validation_fraction}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# --------------------------------------------------------------------------- the result
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

    def attention_weights(self) -> np.ndarray:
        """softmax(a_v) per item over its present components (id first)."""
        present = np.concatenate([np.ones((len(self.item_feature_codes), 1), bool),
                                  self.item_feature_codes > 0], axis=1)
        logits = np.where(present, self.attention_logits.astype(np.float64), -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        w = np.exp(logits)
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    def feature_codes_for(self, category_codes=None, brand_codes=None, price=None,
                          extra_codes: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(B, n_features) codes in this model's table order; absent inputs = missing."""
        given = {"category": category_codes, "brand": brand_codes, **(extra_codes or {})}
        if price is not None:
            given[PRICE_TIER] = price_tier_codes(np.atleast_1d(np.asarray(price, dtype=np.float64)),
                                                 self.price_tier_edges)
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
        """Vectors (in item_vectors' space) for items known only by side features.

        "side_mean"/"id_dropout": the paper's average of the present
        side-feature embeddings (id_dropout trains for exactly this); "ridge":
        a linear map fitted from side embeddings to the warm items' H_v.
        """
        codes = self.feature_codes_for(category_codes, brand_codes, price, extra_codes)
        return self.cold_vectors_from_codes(codes)

    def cold_vectors_from_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        parts = self._side_parts(codes)  # (B, F, d)
        if parts.shape[1] == 0:
            return np.zeros((len(codes), self.dim), np.float32)
        if self.config.get("cold_start") == "ridge" and self.cold_map is not None:
            x = np.concatenate([parts.reshape(len(codes), -1), np.ones((len(codes), 1), np.float32)], axis=1)
            return (x @ self.cold_map).astype(np.float32)
        present = (codes > 0)[..., None]
        return ((parts * present).sum(1) / np.maximum(present.sum(1), 1)).astype(np.float32)

    def _side_parts(self, codes: np.ndarray) -> np.ndarray:
        if not self.feature_names or self.config.get("mode") == "bge":
            return np.zeros((len(codes), 0, self.dim), np.float32)
        return np.stack([self.side_tables[name][codes[:, j]] for j, name in enumerate(self.feature_names)], axis=1)

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


# --------------------------------------------------------------------------- pairs
def skipgram_pairs(walks: np.ndarray, window: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) positions into walks.ravel() for every pair within `window`.

    -1 entries (padding after a dead end) take part in no pair. With `rng`,
    each center position draws its own window 1..window (word2vec's dynamic
    window). Order is deterministic: by offset, then row-major position.
    """
    walks = np.asarray(walks)
    if walks.ndim != 2:
        raise ValueError(f"walks must be 2-d (n_walks, walk_length), got shape {walks.shape}")
    n, length = walks.shape
    flat = np.arange(n * length, dtype=np.int64).reshape(n, length)
    valid = walks >= 0
    reach = rng.integers(1, window + 1, size=(n, length)) if rng is not None else np.full((n, length), window)
    centers, contexts = [], []
    for offset in range(1, min(window, length - 1) + 1):
        both = valid[:, :-offset] & valid[:, offset:]
        forward = both & (reach[:, :-offset] >= offset)  # center left, context right
        backward = both & (reach[:, offset:] >= offset)  # center right, context left
        centers += [flat[:, :-offset][forward], flat[:, offset:][backward]]
        contexts += [flat[:, offset:][forward], flat[:, :-offset][backward]]
    if not centers:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(centers), np.concatenate(contexts)


def _walk_source(walks_or_graph, config: TrainConfig, epoch: int, batch_walks: int) -> Iterator[np.ndarray]:
    """Walk batches of one epoch: fresh walks from a graph, or a fixed array reshuffled."""
    if isinstance(walks_or_graph, np.ndarray):
        order = np.random.default_rng(config.seed + epoch).permutation(len(walks_or_graph))
        for start in range(0, len(order), batch_walks):
            yield walks_or_graph[order[start:start + batch_walks]]
        return
    from recsys.walks import iter_walks

    yield from iter_walks(walks_or_graph, walk_length=config.walk_length, walks_per_node=config.walks_per_node,
                          seed=config.seed + 1000 * epoch, batch_size=batch_walks)


def _node_counts(walks_or_graph, config: TrainConfig, n_items: int) -> np.ndarray:
    """Walk-node frequencies for the noise distribution (a short pre-pass over the walks)."""
    if isinstance(walks_or_graph, np.ndarray):
        w = walks_or_graph[walks_or_graph >= 0]
        return np.bincount(w, minlength=n_items).astype(np.float64)
    from recsys.walks import iter_walks

    counts = np.zeros(n_items, np.float64)
    for batch in iter_walks(walks_or_graph, walk_length=config.walk_length,
                            walks_per_node=min(config.walks_per_node, 4), seed=config.seed + 7919,
                            batch_size=65536):
        counts += np.bincount(batch[batch >= 0], minlength=n_items)
    return counts


def _n_walks(walks_or_graph, config: TrainConfig) -> int:
    if isinstance(walks_or_graph, np.ndarray):
        return len(walks_or_graph)
    return int((np.diff(walks_or_graph.indptr) > 0).sum()) * config.walks_per_node


# --------------------------------------------------------------------------- optimiser
class RowAdagrad:
    """Row-wise Adagrad on gathered rows: one accumulator per table row."""

    def __init__(self, n_rows: int, device: torch.device, eps: float = 1e-10):
        self.state = torch.zeros(n_rows, device=device)
        self.eps = eps

    def step(self, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        if grad.dim() == 1:
            grad = grad.unsqueeze(1)
        self.state.index_add_(0, rows, (grad * grad).mean(dim=1))
        scale = self.state[rows].sqrt_().add_(self.eps).reciprocal_().mul_(-lr)
        table.index_add_(0, rows, grad * scale.unsqueeze(1))


# --------------------------------------------------------------------------- training
def train_embeddings(ds: Dataset, walks_or_graph, config: TrainConfig = TrainConfig(),
                     progress: bool = True) -> TrainedModel:
    """Train EGES/GES/BGE on walks (an ItemGraph to walk on, or an int array of walks)."""
    config.validate()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    device = config.resolved_device()
    features = item_features(ds, config.n_price_tiers)
    model = EGES(torch.from_numpy(features.codes), features.cardinalities, dim=config.dim, mode=config.mode).to(device)
    model.requires_grad_(False)  # updates are manual; autograd runs on gathered rows only

    counts = _node_counts(walks_or_graph, config, ds.n_items)
    if counts.sum() == 0:
        raise ValueError("no walks to train on: the graph has no edges")
    noise = NoiseSampler(counts, config.noise_power, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    pair_rng = np.random.default_rng(config.seed)

    tables = model.tables()
    optimisers = [RowAdagrad(t.shape[0], device) for t in tables]
    context_opt = RowAdagrad(ds.n_items, device)
    attention_opt = RowAdagrad(ds.n_items, device)
    has_side = (model.feature_codes > 0).any(dim=1) if model.n_features else torch.zeros(ds.n_items, dtype=torch.bool, device=device)
    drop_share = config.id_dropout if (config.cold_start == "id_dropout" and model.n_features) else 0.0

    pairs_per_walk = max(1, sum(2 * (config.walk_length - o) for o in range(1, min(config.window, config.walk_length - 1) + 1)))
    if config.dynamic_window:
        pairs_per_walk = max(1, pairs_per_walk * (config.window + 1) // (2 * config.window))
    batch_walks = max(1, config.batch_size // pairs_per_walk)
    total_walks = max(1, _n_walks(walks_or_graph, config) * config.epochs)

    losses: list[float] = []
    n_pairs, walks_done = 0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_walks, unit="walk", desc=f"{config.mode} training")
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for walks in _walk_source(walks_or_graph, config, epoch, batch_walks):
            lr = config.lr * max(config.min_lr_fraction, 1.0 - walks_done / total_walks)
            loss, pairs = _train_step(model, walks, config, pair_rng, gen, noise, optimisers, context_opt,
                                      attention_opt, has_side, drop_share, lr, device)
            walks_done += len(walks)
            if pairs:
                n_pairs += pairs
                losses.append(loss / pairs)
            if bar is not None:
                bar.update(len(walks))
                if losses:
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return _to_trained(model, features, counts, losses, config,
                       {"pairs": n_pairs, "seconds": seconds, "pairs_per_s": n_pairs / max(seconds, 1e-9),
                        "device": str(device)})


def _train_step(model: EGES, walks: np.ndarray, config: TrainConfig, pair_rng, gen, noise: NoiseSampler,
                optimisers, context_opt, attention_opt, has_side, drop_share: float, lr: float,
                device) -> tuple[float, int]:
    """One SGNS step on a batch of walks; returns (summed loss, number of pairs)."""
    centers, contexts = skipgram_pairs(walks, config.window, pair_rng if config.dynamic_window else None)
    if len(centers) == 0:
        return 0.0, 0
    flat = walks.reshape(-1)
    valid = flat >= 0
    compact = np.cumsum(valid) - 1  # walk position -> index among valid positions
    nodes = torch.from_numpy(flat[valid].astype(np.int64)).to(device)
    center_idx = torch.from_numpy(compact[centers]).to(device)
    context_idx = torch.from_numpy(compact[contexts]).to(device)
    n_pos = len(nodes)
    pairs_per_center = torch.bincount(center_idx, minlength=n_pos).to(torch.float32)

    rows = model.rows(nodes)
    drop = None
    if drop_share > 0:
        drop = (torch.rand(n_pos, generator=gen, device=device) < drop_share) & has_side[nodes]
    tables = model.tables()
    components = torch.stack([t[rows[:, j]] for j, t in enumerate(tables)], dim=1).requires_grad_(True)
    logits = model.logits(nodes, drop)
    eges = model.mode == "eges"
    if eges:
        logits = logits.detach().requires_grad_(True)
    h, _ = aggregate(components, logits, model.present(rows, drop))
    context = model.context_embedding.weight
    positive = context[nodes].requires_grad_(True)
    negative_items = noise.sample((n_pos, config.negatives), gen)
    negative = context[negative_items].requires_grad_(True)

    pos_loss = -torch.nn.functional.logsigmoid((h[center_idx] * positive[context_idx]).sum(-1)).sum()
    neg_scores = torch.bmm(negative, h.unsqueeze(-1)).squeeze(-1)
    neg_loss = (-torch.nn.functional.logsigmoid(-neg_scores).sum(-1) * pairs_per_center).sum()
    loss = pos_loss + neg_loss
    loss.backward()

    with torch.no_grad():
        for j, (table, opt) in enumerate(zip(tables, optimisers)):
            opt.step(table, rows[:, j], components.grad[:, j], lr)
        if model.n_features:
            for table in tables[1:]:
                table[0].zero_()  # the "missing" row stays neutral
        context_opt.step(context, nodes, positive.grad, lr)
        context_opt.step(context, negative_items.reshape(-1), negative.grad.reshape(-1, model.dim), lr)
        if eges:
            attention_opt.step(model.attention_logits, nodes, logits.grad, lr)
    return float(loss.detach()), len(centers)


def _to_trained(model: EGES, features: ItemFeatures, counts: np.ndarray, losses: list[float],
                config: TrainConfig, stats: dict) -> TrainedModel:
    with torch.no_grad():
        items = torch.arange(model.n_items, device=model.feature_codes.device)
        h = torch.cat([model(items[s:s + 65536]) for s in range(0, model.n_items, 65536)])
        names = features.names if model.n_features else []
        trained = TrainedModel(
            item_vectors=h.cpu().numpy().astype(np.float32),
            context_vectors=model.context_embedding.weight.cpu().numpy().astype(np.float32).copy(),
            id_embeddings=model.item_embedding.weight.cpu().numpy().astype(np.float32).copy(),
            side_tables={n: t.weight.cpu().numpy().astype(np.float32).copy()
                         for n, t in zip(names, model.side_embeddings)},
            feature_names=list(names),
            feature_values={n: list(v) for n, v in zip(names, features.values)},
            item_feature_codes=features.codes[:, :model.n_features].copy(),
            price_tier_edges=features.price_edges.copy(),
            attention_logits=model.attention_logits.cpu().numpy().astype(np.float32).copy(),
            item_counts=counts.astype(np.float64),
            loss_history=np.asarray(losses, dtype=np.float64),
            config=dataclasses.asdict(config),
            stats=stats,
        )
    if config.cold_start == "ridge" and trained.feature_names:
        trained.cold_map = fit_cold_map(trained, counts > 0, config.ridge_alpha)
    return trained


def fit_cold_map(trained: TrainedModel, warm: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Ridge map [side embeddings, 1] -> H_v fitted on warm items (the "ridge" cold start)."""
    codes = trained.item_feature_codes[warm]
    x = trained._side_parts(codes).reshape(len(codes), -1)
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1).astype(np.float64)
    y = trained.item_vectors[warm].astype(np.float64)
    gram = x.T @ x
    # alpha is relative to the average feature variance, so it is scale-free
    gram[np.diag_indices_from(gram)] += alpha * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram, x.T @ y).astype(np.float32)
