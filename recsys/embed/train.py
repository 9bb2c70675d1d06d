"""Training EGES embeddings on random walks (training only: the result is `recsys/embed/trained.py`).

The loop is word2vec's skip-gram with negative sampling, in two engines with
one objective:

* "numba" (CPU, the default there): `recsys.embed.sgns_cpu`, one fused kernel per
  batch of walks that goes center by center as word2vec's C loop does and
  writes row-wise Adagrad updates straight into the tables (Hogwild across
  `num_threads` threads). Ta-Feng, 2 cores: 4.0M pairs/s with one thread
  and 6.0M with two, against gensim's 1.7M and 3.1M (docs/benchmarks.md);
* "torch" (GPU, the default there): batched steps. The (center, context)
  pairs of a batch are numpy masks per window offset (`window_masks`;
  `skipgram_pairs` lists the same pairs explicitly); H is computed once per
  walk position; the scores of all pairs at offset o are one elementwise
  product of walk-shaped tensors shifted by o; gradients are written out by
  hand (tested against autograd) and go back into the gathered rows with
  `index_add_` (row-wise Adagrad, as in PyTorch-BigGraph). Steps far above
  ~65k pairs made Adagrad unstable in one run, so large GPU batches need a
  lower lr.

Both draw K noise items per center position and count them once for each of
that center's pairs: the same K-negatives-per-pair objective as word2vec,
with the noise shared between the pairs of one center.

`train_embeddings` returns a `TrainedModel` (numpy arrays only); the
recommender that scores with it is `recsys/recommenders/eges.py`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from recsys.data.dataset import Dataset
from recsys.data.walks import build_alias_table, iter_walks, walk_start_nodes
from recsys.embed import sgns_cpu
from recsys.embed.model import EGES, MODES, ItemFeatures, NoiseSampler, aggregate, item_features
from recsys.embed.trained import TrainedModel

COLD_START_STRATEGIES = ("side_mean", "id_dropout", "ridge")
ENGINES = ("auto", "numba", "torch")


@dataclass
class TrainConfig:
    """Everything that decides a training run (how the recommender scores is `recsys.recommenders.eges.ScorerConfig`)."""

    mode: str = "eges"  # "bge" | "ges" | "eges"
    dim: int = 64
    walk_length: int = 10
    walks_per_node: int = 10
    window: int = 3  # Ta-Feng: 3 beat 5 on warm Recall@20 (0.092 vs 0.087, 10 epochs)
    dynamic_window: bool = True  # word2vec's shrunk windows: near neighbours count more
    negatives: int = 5
    noise_power: float = 0.75
    epochs: int = 6  # fresh walks each epoch; 1 epoch is clearly under-trained (0.076 vs 0.087)
    # Large graphs train fewer epochs: at most this many (center, context) pairs in all (None = no
    # cap). Ta-Feng trains 6 epochs in about 46M pairs; a 1M-item shop would take 1.8B (15+ minutes
    # a training on 2 cores, where tables of 1M rows train at about 2M pairs/s).
    max_pairs: int | None = 500_000_000
    batch_size: int = 32768  # (center, context) pairs per step, about
    lr: float = 0.3  # row-wise Adagrad
    min_lr_fraction: float = 0.1  # linear decay to lr * this over the run
    # Adagrad steps every logit row by about lr whatever its gradient's size, so at the
    # tables' lr the per-item attention saturates to one component within an epoch;
    # a smaller rate lets it settle where the loss puts it.
    attention_lr_scale: float = 0.1
    seed: int = 0
    n_price_tiers: int = 10
    cold_start: str = "id_dropout"  # "side_mean" (paper) | "id_dropout" | "ridge"
    id_dropout: float = 0.25  # share of center positions trained without their id (id_dropout)
    ridge_alpha: float = 0.1  # regularisation of the "ridge" cold-start map
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # "auto": the fused numba kernel on CPU (recsys.embed.sgns_cpu), the batched PyTorch step on GPU
    engine: str = "auto"
    num_threads: int | None = None  # CPU threads of the training loop; None = all cores

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"TrainConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"TrainConfig.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.cold_start not in COLD_START_STRATEGIES:
            raise ValueError(f"TrainConfig.cold_start must be one of {COLD_START_STRATEGIES}, got {self.cold_start!r}")
        for name in ["dim", "walk_length", "walks_per_node", "window", "negatives", "epochs", "batch_size",
                     "n_price_tiers"]:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_pairs is not None and int(self.max_pairs) < 1:
            raise ValueError(f"TrainConfig.max_pairs must be >= 1 or None, got {self.max_pairs}")
        if self.walk_length < 2:
            raise ValueError(f"TrainConfig.walk_length must be >= 2, got {self.walk_length}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"TrainConfig.id_dropout must be in [0, 1), got {self.id_dropout}")

    def resolved_device(self) -> torch.device:
        if self.engine == "numba":
            return torch.device("cpu")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "numba" if self.resolved_device().type == "cpu" else "torch"


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


def _walk_source(walks_or_graph, config: TrainConfig, epoch: int, batch_walks: int,
                 alias_table=None, run_chunks=None) -> Iterator[np.ndarray]:
    """Walk batches of one epoch: fresh walks from a graph, or a fixed array reshuffled."""
    if isinstance(walks_or_graph, np.ndarray):
        order = np.random.default_rng(config.seed + epoch).permutation(len(walks_or_graph))
        for start in range(0, len(order), batch_walks):
            yield walks_or_graph[order[start:start + batch_walks]]
        return
    yield from iter_walks(walks_or_graph, walk_length=config.walk_length, walks_per_node=config.walks_per_node,
                          seed=config.seed + 1000 * epoch, batch_size=batch_walks, alias_table=alias_table,
                          run_chunks=run_chunks)


def _node_counts(walks_or_graph, config: TrainConfig, n_items: int, alias_table=None, run_chunks=None) -> np.ndarray:
    """Walk-node frequencies for the noise distribution (a short pre-pass over the walks)."""
    if isinstance(walks_or_graph, np.ndarray):
        w = walks_or_graph[walks_or_graph >= 0]
        return np.bincount(w, minlength=n_items).astype(np.float64)
    counts = np.zeros(n_items, np.float64)
    for batch in iter_walks(walks_or_graph, walk_length=config.walk_length,
                            walks_per_node=min(config.walks_per_node, 4), seed=config.seed + 7919,
                            batch_size=65536, alias_table=alias_table, run_chunks=run_chunks):
        counts += np.bincount(batch[batch >= 0], minlength=n_items)
    return counts


def _n_walks(walks_or_graph, config: TrainConfig) -> int:
    if isinstance(walks_or_graph, np.ndarray):
        return len(walks_or_graph)
    return int((np.diff(walks_or_graph.indptr) > 0).sum()) * config.walks_per_node


SUM_UPDATES = None  # in a data-parallel training's batches: the ranks sum their updates here


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
                     progress: bool = True, run_chunks=None, data_parallel=None) -> TrainedModel:
    """Train EGES/GES/BGE on walks (an ItemGraph to walk on, or an int array of walks).

    run_chunks: where the walks' chunks run (recsys.data.walks.iter_walks; e.g. a Dask cluster's
    workers, recsys/jobs/dask_walks.py); the walks, and so the model, are the same.
    data_parallel: this process's rank of a data-parallel training (recsys/embed/distributed.py): it
    trains on its share of the walk chunks and the ranks sum their updates at every epoch's end.
    """
    config.validate()
    engine = config.resolved_engine()
    if config.num_threads and engine == "torch":
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    device = config.resolved_device()
    features = item_features(ds, config.n_price_tiers)
    model = EGES(torch.from_numpy(features.codes), features.cardinalities, dim=config.dim, mode=config.mode).to(device)
    model.requires_grad_(False)  # updates are manual; autograd runs on gathered rows only

    # one alias table for the noise pre-pass and every epoch's walks
    alias_table = None
    if not isinstance(walks_or_graph, np.ndarray):
        alias_table = build_alias_table(walks_or_graph)
    counts = _node_counts(walks_or_graph, config, ds.n_items, alias_table, run_chunks)  # every rank: all walks
    if counts.sum() == 0:
        raise ValueError("no walks to train on: the graph has no edges")
    drop_share = config.id_dropout if (config.cold_start == "id_dropout" and model.n_features) else 0.0

    pairs_per_walk = max(1, sum(2 * (config.walk_length - o) for o in range(1, min(config.window, config.walk_length - 1) + 1)))
    if config.dynamic_window:
        pairs_per_walk = max(1, pairs_per_walk * (config.window + 1) // (2 * config.window))
    batch_walks = max(1, config.batch_size // pairs_per_walk)
    walks_per_epoch = _n_walks(walks_or_graph, config)
    epochs = planned_epochs(config, walks_per_epoch * pairs_per_walk)
    share = 1
    if data_parallel is not None:
        if engine != "numba" or isinstance(walks_or_graph, np.ndarray):
            raise ValueError("data-parallel training runs the CPU engine on a graph's walks")
        run_chunks, share = data_parallel.own_chunks(run_chunks), data_parallel.world_size
    total_walks = max(1, walks_per_epoch * epochs // share)
    own_per_epoch = (data_parallel.own_walks(len(walk_start_nodes(walks_or_graph)), config.walks_per_node)
                     if data_parallel is not None else 0)

    def epoch_batches():
        for epoch in range(epochs):
            if data_parallel is None:
                yield from _walk_source(walks_or_graph, config, epoch, batch_walks, alias_table, run_chunks)
                continue
            # every rank sums its updates the same number of times an epoch, at the same shares of its walks
            done, sums = 0, 0
            for walks in _walk_source(walks_or_graph, config, epoch, batch_walks, alias_table, run_chunks):
                yield walks
                done += len(walks)
                while sums < data_parallel.sums_per_epoch - 1 and done * data_parallel.sums_per_epoch >= (
                        sums + 1) * own_per_epoch:
                    sums += 1
                    yield SUM_UPDATES
            for _ in range(data_parallel.sums_per_epoch - sums):
                yield SUM_UPDATES
    batches = epoch_batches()
    bar = None
    if progress:
        bar = tqdm(total=total_walks, unit="walk", desc=f"{config.mode} training")
    started = time.perf_counter()
    if engine == "numba":
        losses, n_pairs, threads = _epochs_numba(model, batches, counts, config, drop_share, total_walks, bar,
                                                 data_parallel)
    else:
        losses, n_pairs, threads = _epochs_torch(model, batches, counts, config, drop_share, total_walks, bar,
                                                 device)
    seconds = time.perf_counter() - started
    if bar is not None:
        bar.close()
    return _to_trained(model, features, counts, losses, config,
                       {"pairs": n_pairs, "seconds": seconds, "pairs_per_s": n_pairs / max(seconds, 1e-9),
                        "device": str(device), "engine": engine, "threads": threads, "epochs": epochs})


def planned_epochs(config: TrainConfig, pairs_per_epoch: int) -> int:
    """config.epochs, or fewer when they would exceed config.max_pairs (at least one)."""
    if config.max_pairs is None or pairs_per_epoch <= 0:
        return config.epochs
    return max(1, min(config.epochs, int(config.max_pairs) // int(pairs_per_epoch)))


def _learning_rate(config: TrainConfig, walks_done: int, total_walks: int) -> float:
    """Linear decay from lr to lr * min_lr_fraction over the run."""
    return config.lr * max(config.min_lr_fraction, 1.0 - walks_done / total_walks)


def _run_batches(batches, config: TrainConfig, total_walks: int, bar, step) -> tuple[list[float], int]:
    """The loop both engines share: learning-rate decay, loss per pair, progress.

    step(walks, lr, walks done before this batch) -> (summed loss, pairs).
    """
    losses: list[float] = []
    n_pairs, walks_done = 0, 0
    for walks in batches:
        if walks is SUM_UPDATES:
            step(SUM_UPDATES, 0.0, walks_done)
            continue
        loss, pairs = step(walks, _learning_rate(config, walks_done, total_walks), walks_done)
        walks_done += len(walks)
        if pairs:
            n_pairs += pairs
            losses.append(loss / pairs)
        if bar is not None:
            bar.update(len(walks))
            if losses:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return losses, n_pairs


def _epochs_torch(model: EGES, batches, counts: np.ndarray, config: TrainConfig, drop_share: float,
                  total_walks: int, bar, device) -> tuple[list[float], int, int]:
    """The batched PyTorch step (GPUs; `engine="torch"` on CPU)."""
    noise = NoiseSampler(counts, config.noise_power, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    pair_rng = np.random.default_rng(config.seed)
    optimisers = [RowAdagrad(t.shape[0], device) for t in model.tables()]
    context_opt = RowAdagrad(model.n_items, device)
    attention_opt = RowAdagrad(model.n_items, device)
    has_side = ((model.feature_codes > 0).any(dim=1) if model.n_features
                else torch.zeros(model.n_items, dtype=torch.bool, device=device))

    def step(walks, lr, _walks_done):
        return _train_step(model, walks, config, pair_rng, gen, noise, optimisers, context_opt, attention_opt,
                           has_side, drop_share, lr, device)

    losses, n_pairs = _run_batches(batches, config, total_walks, bar, step)
    return losses, n_pairs, torch.get_num_threads()


def component_rows(model: EGES) -> tuple[np.ndarray, np.ndarray]:
    """(offsets of each table in one stacked array, (n_items, J) row of each item's component there, -1 = missing)."""
    sizes = [t.shape[0] for t in model.tables()]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    codes = model.feature_codes.cpu().numpy()
    rows = np.empty((model.n_items, 1 + model.n_features), np.int64)
    rows[:, 0] = np.arange(model.n_items)
    for j in range(model.n_features):
        rows[:, j + 1] = np.where(codes[:, j] > 0, offsets[j + 1] + codes[:, j], -1)
    return offsets, rows


def _epochs_numba(model: EGES, batches, counts: np.ndarray, config: TrainConfig, drop_share: float,
                  total_walks: int, bar, data_parallel=None) -> tuple[list[float], int, int]:
    """The fused CPU kernel (recsys.embed.sgns_cpu): tables as one stacked numpy array, updated in place."""
    threads = sgns_cpu.set_threads(config.num_threads)
    tables = model.tables()
    offsets, comp_rows = component_rows(model)
    emb = np.ascontiguousarray(np.concatenate([t.cpu().numpy() for t in tables]), dtype=np.float32)
    ctx = np.ascontiguousarray(model.context_embedding.weight.cpu().numpy(), dtype=np.float32)
    logits = np.ascontiguousarray(model.attention_logits.detach().cpu().numpy(), dtype=np.float32)
    emb_state = np.zeros(len(emb), np.float32)
    ctx_state = np.zeros(len(ctx), np.float32)
    logit_state = np.zeros(len(logits), np.float32)
    table = sgns_cpu.noise_table(counts, config.noise_power)
    has_side = (comp_rows[:, 1:] >= 0).any(axis=1) if model.n_features else np.zeros(model.n_items, bool)
    learn_attention = model.mode == "eges"
    shared = [emb, emb_state, ctx, ctx_state, logits, logit_state]  # what data-parallel ranks keep equal
    if data_parallel is not None:
        data_parallel.start(shared)

    def step(walks, lr, walks_done):
        if walks is SUM_UPDATES:  # the ranks' updates since the last sum, summed, in every rank
            data_parallel.sum_updates(shared)
            return 0.0, 0
        walks = np.ascontiguousarray(walks, dtype=np.int64)
        loss_out = np.zeros(len(walks), np.float64)
        pairs_out = np.zeros(len(walks), np.int64)
        with sgns_cpu.KERNEL_LOCK:
            sgns_cpu.set_threads(config.num_threads)  # numba's thread count is per calling thread
            sgns_cpu.train_batch(walks, walks_done, config.seed, comp_rows, emb, emb_state, ctx, ctx_state,
                                 logits, logit_state, table, has_side, config.window, config.dynamic_window,
                                 config.negatives, drop_share, learn_attention, lr, lr * config.attention_lr_scale,
                                 1e-10, loss_out, pairs_out)
        return float(loss_out.sum()), int(pairs_out.sum())

    losses, n_pairs = _run_batches(batches, config, total_walks, bar, step)
    with torch.no_grad():  # back into the module, which _to_trained reads
        for table_t, start in zip(tables, offsets):
            table_t.copy_(torch.from_numpy(emb[start:start + table_t.shape[0]]))
        model.context_embedding.weight.copy_(torch.from_numpy(ctx))
        model.attention_logits.copy_(torch.from_numpy(logits))
    return losses, n_pairs, threads


def window_masks(walks: np.ndarray, window: int, rng: np.random.Generator | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per offset o = 1..window: (forward, backward) bool masks of shape (n, L - o).

    forward[r, i]: position i is a center with context i + o; backward[r, i]:
    position i + o is a center with context i. The same pairs, in the same
    order, as `skipgram_pairs` with the same rng state.
    """
    n, length = walks.shape
    valid = walks >= 0
    reach = rng.integers(1, window + 1, size=(n, length)) if rng is not None else np.full((n, length), window)
    masks = []
    for offset in range(1, min(window, length - 1) + 1):
        both = valid[:, :-offset] & valid[:, offset:]
        masks.append((both & (reach[:, :-offset] >= offset), both & (reach[:, offset:] >= offset)))
    return masks


@dataclass
class SparseGradients:
    """Gradients of one SGNS step as (rows, values) per table, ready for index_add_."""

    loss: float
    n_pairs: int
    tables: list[tuple[torch.Tensor, torch.Tensor]]  # id table, then each side-feature table
    context: tuple[torch.Tensor, torch.Tensor]
    attention: tuple[torch.Tensor, torch.Tensor] | None  # eges only


def sgns_gradients(model: EGES, walks: torch.Tensor, masks: list[tuple[torch.Tensor, torch.Tensor]],
                   sample_negatives, drop: torch.Tensor | None = None) -> SparseGradients:
    """Loss and hand-written gradients of skip-gram with negative sampling on a walk batch.

    walks (n, L) long with -1 padding; masks from `window_masks` (as tensors);
    sample_negatives(n_centers) -> (n_centers, K) noise items, one row per
    walk position that is the center of at least one pair (row-major order);
    drop (n*L,) bool: positions trained without their id embedding.

    Pairs are never materialised: for each window offset o the scores of all
    pairs (i, i+o) are one elementwise product of walk-shaped tensors shifted
    by o, and so are their gradients (several times faster than autograd's
    scatter backward; a test checks them against autograd).
    """
    n_walks, length = walks.shape
    dim = model.dim
    nodes = walks.clamp(min=0).reshape(-1)  # padding reads row 0; its gradients are masked out
    rows = model.rows(nodes)
    tables = model.tables()
    components = torch.stack([t[rows[:, j]] for j, t in enumerate(tables)], dim=1)  # (P, J, d)
    present = model.present(rows, drop)
    h, weights = aggregate(components, model.logits(nodes, drop), present)
    context = model.context_embedding.weight
    x = context[nodes]
    h_w, x_w = h.view(n_walks, length, dim), x.view(n_walks, length, dim)
    grad_h = torch.zeros_like(h_w)
    grad_x = torch.zeros_like(x_w)
    pairs_per_center = torch.zeros(n_walks, length, device=h.device, dtype=h.dtype)

    loss = torch.zeros((), device=h.device, dtype=torch.float64)
    for offset, (forward, backward) in enumerate(masks, start=1):
        for mask, c_sl, t_sl in ((forward, slice(None, -offset), slice(offset, None)),
                                 (backward, slice(offset, None), slice(None, -offset))):
            m = mask.to(h.dtype)
            hc, xt = h_w[:, c_sl], x_w[:, t_sl]
            score = (hc * xt).sum(-1)
            loss -= (torch.nn.functional.logsigmoid(score) * m).sum()
            g = (torch.sigmoid(score) - 1.0) * m  # d loss / d score
            grad_h[:, c_sl] += g.unsqueeze(-1) * xt
            grad_x[:, t_sl] += g.unsqueeze(-1) * hc
            pairs_per_center[:, c_sl] += m
    n_pairs = int(pairs_per_center.sum().item())

    # Negatives: K noise items per center position, counted once per pair of that center.
    keep = (pairs_per_center.reshape(-1) > 0).nonzero().squeeze(1)
    h_c, w_c = h[keep], pairs_per_center.reshape(-1)[keep]
    negative_items = sample_negatives(len(keep))
    negative = context[negative_items]  # (C, K, d)
    neg_score = torch.bmm(negative, h_c.unsqueeze(-1)).squeeze(-1)
    loss -= (torch.nn.functional.logsigmoid(-neg_score).sum(-1) * w_c).sum()
    g_neg = torch.sigmoid(neg_score) * w_c.unsqueeze(1)  # (C, K)
    grad_h_flat = grad_h.view(-1, dim)
    grad_h_flat.index_add_(0, keep, torch.bmm(g_neg.unsqueeze(1), negative).squeeze(1))
    grad_negative = g_neg.unsqueeze(-1) * h_c.unsqueeze(1)

    # Back through the attention: dH/dW^j = w_j; dH/da_j = w_j (<g, W^j> - <g, H>).
    pos = (walks.reshape(-1) >= 0).nonzero().squeeze(1)
    g_h = grad_h_flat[pos]
    w = weights[pos]
    grad_components = w.unsqueeze(-1) * g_h.unsqueeze(1)  # (P, J, d)
    table_grads = []
    for j in range(len(tables)):
        used = present[pos, j].nonzero().squeeze(1)  # missing features and dropped ids get nothing
        table_grads.append((rows[pos[used], j], grad_components[used, j]))
    attention = None
    if model.mode == "eges":
        dw = (components[pos] * g_h.unsqueeze(1)).sum(-1)  # (P, J)
        grad_logits = w * (dw - (w * dw).sum(1, keepdim=True))
        if drop is None:
            attention = (nodes[pos], grad_logits)
        else:  # positions trained without their id used fixed (zero) logits
            kept = (~drop[pos]).nonzero().squeeze(1)
            attention = (nodes[pos[kept]], grad_logits[kept])
    context_grad = (torch.cat([nodes[pos], negative_items.reshape(-1)]),
                    torch.cat([grad_x.view(-1, dim)[pos], grad_negative.reshape(-1, dim)]))
    return SparseGradients(float(loss.item()), n_pairs, table_grads, context_grad, attention)


def _train_step(model: EGES, walks: np.ndarray, config: TrainConfig, pair_rng, gen, noise: NoiseSampler,
                optimisers, context_opt, attention_opt, has_side, drop_share: float, lr: float,
                device) -> tuple[float, int]:
    """One SGNS step on a batch of walks; returns (summed loss, number of pairs)."""
    masks = [(torch.from_numpy(f).to(device), torch.from_numpy(b).to(device))
             for f, b in window_masks(walks, config.window, pair_rng if config.dynamic_window else None)]
    walks_t = torch.from_numpy(walks.astype(np.int64)).to(device)
    drop = None
    if drop_share > 0:
        flat = walks_t.clamp(min=0).reshape(-1)
        drop = (torch.rand(len(flat), generator=gen, device=device) < drop_share) & has_side[flat]
    grads = sgns_gradients(model, walks_t, masks, lambda n: noise.sample((n, config.negatives), gen), drop)
    if grads.n_pairs == 0:
        return 0.0, 0
    for table, opt, (rows, values) in zip(model.tables(), optimisers, grads.tables):
        opt.step(table, rows, values, lr)
    context_opt.step(model.context_embedding.weight, *grads.context, lr)
    if grads.attention is not None:
        attention_opt.step(model.attention_logits, *grads.attention, lr * config.attention_lr_scale)
    return grads.loss, grads.n_pairs


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
    x = trained.side_parts(codes).reshape(len(codes), -1)
    x = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1).astype(np.float64)
    y = trained.item_vectors[warm].astype(np.float64)
    gram = x.T @ x
    # alpha is relative to the average feature variance, so it is scale-free
    gram[np.diag_indices_from(gram)] += alpha * max(np.trace(gram) / len(gram), 1e-12)
    return np.linalg.solve(gram, x.T @ y).astype(np.float32)
