"""The CPU training loop of EGES: one fused numba kernel per batch of walks.

word2vec's C loop, with EGES's side features: for every walk position the
kernel builds H_v from the item's id and side-feature rows and its
attention, scores it against its window's context rows and K noise rows,
and writes the row-wise Adagrad updates straight back into the tables
(Hogwild across threads, as word2vec and gensim do). Nothing walk-shaped is
materialised, which is what kept the batched PyTorch step (recsys.embed.train's
`sgns_gradients`, still used on GPUs) memory-bound at about half of gensim's
speed on two cores.

The objective is the batched step's: K noise items per center position,
each counted once for every pair of that center. Within one center every
gradient uses the rows as they were before the center's updates, so a
center's update is one Adagrad step on its own loss (the tests compare it
with autograd). Random numbers (window draws, noise, id dropout) come from
a per-walk xorshift generator seeded from (seed, walk number), so a run is
reproducible for a seed; with one thread it is bit-identical.

All component tables live in one array `emb` (id rows first, then each side
table at its offset); `comp_rows[v, j]` is item v's row of component j in
it, -1 when the feature is missing.
"""
from __future__ import annotations

import math
import threading

import numba as nb
import numpy as np

NOISE_TABLE_MAX = 1 << 24  # entries of the unigram noise table (word2vec uses 1e8)
NOISE_TABLE_MIN = 1 << 20

_MULT = np.uint64(0x2545F4914F6CDD1D)
# numba's "workqueue" threading layer (the fallback where neither OpenMP nor TBB loads) aborts the
# process when two threads launch parallel kernels at once: trainings in one process take turns
KERNEL_LOCK = threading.Lock()


@nb.njit(inline="always")
def _splitmix64(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15))
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(inline="always")
def _next(state):
    """xorshift64*: (new state, output)."""
    x = state
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    return x, x * _MULT


@nb.njit(inline="always")
def _log_sigmoid_neg(s):
    """-log(sigmoid(s)), stable for any s."""
    if s > 0.0:
        return math.log1p(math.exp(-s))
    return -s + math.log1p(math.exp(s))


@nb.njit(inline="always")
def _sigmoid(s):
    if s >= 0.0:
        return 1.0 / (1.0 + math.exp(-s))
    e = math.exp(s)
    return e / (1.0 + e)


@nb.njit(inline="always")
def _adagrad_row(table, state, row, grad, lr, eps):
    """Row-wise Adagrad: state[row] += mean(grad^2); table[row] -= lr * grad / (sqrt(state[row]) + eps)."""
    d = grad.shape[0]
    sq = np.float32(0.0)
    for k in range(d):
        sq += grad[k] * grad[k]
    state[row] += sq / d
    scale = np.float32(lr / (math.sqrt(state[row]) + eps))
    for k in range(d):
        table[row, k] -= scale * grad[k]


@nb.njit(fastmath=True, cache=True)
def center_update(v, contexts, n_contexts, noise_items, n_noise, drop, comp_rows, emb, emb_state, ctx, ctx_state,
                  logits, logit_state, learn_attention, lr, att_lr, eps, h, gh, grad, weights, dots):
    """One center position: SGNS loss of its pairs and its noise, and the Adagrad updates. Returns the loss.

    contexts[:n_contexts]: the context items of its pairs; noise_items[:n_noise]:
    noise items, each weighted by n_contexts; drop: trained without the id
    (a plain average of its side features, as a cold item is scored).
    h, gh, grad (dim,), weights, dots (J,): scratch space.
    """
    n_comp = comp_rows.shape[1]
    d = emb.shape[1]
    # attention weights over the present components (softmax of the logits, or uniform when dropped)
    top = -1e30
    for j in range(n_comp):
        present = comp_rows[v, j] >= 0 and not (j == 0 and drop)
        if present:
            a = 0.0 if drop else logits[v, j]
            weights[j] = a
            if a > top:
                top = a
        else:
            weights[j] = -1e30
    total = 0.0
    for j in range(n_comp):
        if weights[j] > -1e29:
            weights[j] = math.exp(weights[j] - top)
            total += weights[j]
        else:
            weights[j] = 0.0
    for j in range(n_comp):
        weights[j] /= total
    for k in range(d):
        h[k] = 0.0
        gh[k] = 0.0
    for j in range(n_comp):
        if weights[j] > 0.0:
            row = comp_rows[v, j]
            w = np.float32(weights[j])
            for k in range(d):
                h[k] += w * emb[row, k]

    loss = 0.0
    for p in range(n_contexts + n_noise):
        positive = p < n_contexts
        item = contexts[p] if positive else noise_items[p - n_contexts]
        s = np.float32(0.0)
        for k in range(d):
            s += h[k] * ctx[item, k]
        if positive:
            g = np.float32(_sigmoid(s) - 1.0)
            loss += _log_sigmoid_neg(s)
        else:
            g = np.float32(_sigmoid(s) * n_contexts)
            loss += n_contexts * _log_sigmoid_neg(-s)
        for k in range(d):
            gh[k] += g * ctx[item, k]
            grad[k] = g * h[k]
        _adagrad_row(ctx, ctx_state, item, grad, lr, eps)

    # back through the attention: dH/dW^j = w_j; dH/da_j = w_j (<gh, W^j> - <gh, H>)
    if learn_attention and not drop:
        gh_h = 0.0
        for k in range(d):
            gh_h += gh[k] * h[k]
        for j in range(n_comp):
            dots[j] = 0.0
            if weights[j] > 0.0:
                row = comp_rows[v, j]
                acc = np.float32(0.0)
                for k in range(d):
                    acc += gh[k] * emb[row, k]
                dots[j] = np.float32(weights[j] * (acc - gh_h))
        sq = 0.0
        for j in range(n_comp):
            sq += dots[j] * dots[j]
        logit_state[v] += sq / n_comp
        scale = att_lr / (math.sqrt(logit_state[v]) + eps)
        for j in range(n_comp):
            logits[v, j] -= np.float32(scale * dots[j])
    for j in range(n_comp):
        if weights[j] > 0.0:
            w = np.float32(weights[j])
            for k in range(d):
                grad[k] = w * gh[k]
            _adagrad_row(emb, emb_state, comp_rows[v, j], grad, lr, eps)
    return loss


@nb.njit(parallel=True, fastmath=True, cache=True)
def train_batch(walks, walk_offset, seed, comp_rows, emb, emb_state, ctx, ctx_state, logits, logit_state,
                noise_table, has_side, window, dynamic_window, negatives, drop_share, learn_attention,
                lr, att_lr, eps, loss_out, pairs_out):
    """SGNS over a batch of walks (n, L), -1 padding; per-walk loss and pair counts into loss_out/pairs_out.

    walk_offset: the batch's first walk number in the run (seeds each walk's generator).
    """
    n, length = walks.shape
    n_comp = comp_rows.shape[1]
    d = emb.shape[1]
    table_size = np.uint64(noise_table.shape[0])
    for w in nb.prange(n):
        state = _splitmix64(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(walk_offset + w))
        if state == np.uint64(0):
            state = np.uint64(1)
        h = np.empty(d, np.float32)
        gh = np.empty(d, np.float32)
        grad = np.empty(d, np.float32)
        weights = np.empty(n_comp, np.float64)
        dots = np.empty(n_comp, np.float64)
        contexts = np.empty(2 * window, np.int64)
        noise_items = np.empty(negatives, np.int64)
        loss = 0.0
        pairs = 0
        for i in range(length):
            v = walks[w, i]
            if v < 0:
                continue
            reach = window
            if dynamic_window:
                state, r = _next(state)
                reach = 1 + np.int64(r % np.uint64(window))
            n_contexts = 0
            for t in range(max(0, i - reach), min(length, i + reach + 1)):
                if t != i and walks[w, t] >= 0:
                    contexts[n_contexts] = walks[w, t]
                    n_contexts += 1
            if n_contexts == 0:
                continue
            for k in range(negatives):
                state, r = _next(state)
                noise_items[k] = noise_table[np.int64(r % table_size)]
            drop = False
            if drop_share > 0.0 and has_side[v]:
                state, r = _next(state)
                drop = (r >> np.uint64(11)) * (1.0 / 9007199254740992.0) < drop_share
            loss += center_update(v, contexts, n_contexts, noise_items, negatives, drop, comp_rows, emb,
                                  emb_state, ctx, ctx_state, logits, logit_state, learn_attention, lr, att_lr,
                                  eps, h, gh, grad, weights, dots)
            pairs += n_contexts
        loss_out[w] = loss
        pairs_out[w] = pairs


def noise_table(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """word2vec's unigram^power table: item i fills a share p_i of the entries (items below 1/size never drawn)."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.where(counts > 0, counts ** power, 0.0)  # 0 ** 0 is 1: an item never walked is never noise
    probs /= probs.sum()
    size = int(min(NOISE_TABLE_MAX, max(NOISE_TABLE_MIN, 16 * len(counts))))
    cdf = np.cumsum(probs)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, (np.arange(size) + 0.5) / size, side="right").astype(np.int32)


def set_threads(num_threads: int | None) -> int:
    """Numba threads for the kernel (None = all the machine's cores); returns the count in use."""
    limit = nb.config.NUMBA_NUM_THREADS
    nb.set_num_threads(max(1, min(int(num_threads or limit), limit)))
    return nb.get_num_threads()
