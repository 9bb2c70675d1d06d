"""Vectors for items first bought after a version was trained, learned with every other vector frozen.

The version's skip-gram objective, restricted to the new items' own rows:
for a new item t with query vector u_t (the "input" side, what the item
queries with) and candidate vector v_t (the "context" side, what it is found
by), each co-purchase (t, s) of weight w pulls

    w * [log sigma(u_t . V_s) + log sigma(U_s . v_t)]

up and `negatives` items drawn by popularity^0.75 (the training's noise
distribution) push down, for `steps` full-batch Adam steps. U and V are the
version's decoded query and candidate vectors, unchanged. An L2 pull of
weight `l2` towards the starting vectors (the cold-start vector from the
item's side features, and its category's mean candidate vector) keeps an
item with a handful of purchases close to what its features say; more
purchases move it further. Numpy only: a refresh runs where serving runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldInConfig:
    min_buyers: int = 2  # distinct accounts behind a new item before it is folded in: one account cannot add one
    steps: int = 100
    learning_rate: float = 0.05
    negatives: int = 10  # noise draws per new item, each weighing its whole co-purchase weight
    l2: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.min_buyers < 1 or self.steps < 0 or self.negatives < 1:
            raise ValueError("FoldInConfig: min_buyers and negatives must be >= 1, steps >= 0")
        if not self.learning_rate > 0 or self.l2 < 0:
            raise ValueError("FoldInConfig: learning_rate must be > 0 and l2 >= 0")


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def fold_in(query_start: np.ndarray, candidate_start: np.ndarray, pair_item: np.ndarray, pair_partner: np.ndarray,
            pair_weight: np.ndarray, partner_query: np.ndarray, partner_candidate: np.ndarray,
            noise: np.ndarray, config: FoldInConfig = FoldInConfig()) -> tuple[np.ndarray, np.ndarray, dict]:
    """(query vectors, candidate vectors, check) of the new items.

    query_start, candidate_start: (m, d) starting vectors of the m new items;
    pair_item / pair_partner / pair_weight: co-purchases (new item number,
    partner row into partner_query / partner_candidate (n, d), weight);
    noise: (n,) sampling weights of the partner rows (popularity).
    check: the mean log-likelihood of the co-purchases against the same
    noise samples, with the starting vectors and after.
    """
    config.validate()
    u = np.array(query_start, np.float64)
    v = np.array(candidate_start, np.float64)
    u0, v0 = u.copy(), v.copy()
    m, d = u.shape
    pair_item = np.asarray(pair_item, np.int64)
    pair_partner = np.asarray(pair_partner, np.int64)
    w = np.asarray(pair_weight, np.float64)
    U, V = np.asarray(partner_query, np.float64), np.asarray(partner_candidate, np.float64)
    rng = np.random.default_rng(config.seed)
    p = np.asarray(noise, np.float64) ** 0.75
    p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1.0 / len(p))
    mass = np.bincount(pair_item, weights=w, minlength=m)  # each item's co-purchase weight
    n_neg = config.negatives
    # noise draws per item: fixed, so the check compares the same objective before and after
    neg_item = np.repeat(np.arange(m), n_neg)
    neg_row = rng.choice(len(p), size=m * n_neg, p=p)
    neg_weight = mass[neg_item]  # `negatives` draws per unit of co-purchase weight, as training draws them

    def objective(u, v):
        pos = (_log_sigmoid((u[pair_item] * V[pair_partner]).sum(1)) + _log_sigmoid((U[pair_partner] * v[pair_item]).sum(1)))
        neg = (_log_sigmoid(-(u[neg_item] * V[neg_row]).sum(1)) + _log_sigmoid(-(U[neg_row] * v[neg_item]).sum(1)))
        return float(((w * pos).sum() + (neg_weight * neg).sum()) / max(w.sum(), 1e-12))

    before = objective(u, v)
    mu, mv, su, sv = (np.zeros_like(u) for _ in range(4))
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, config.steps + 1):
        gu, gv = config.l2 * (u - u0), config.l2 * (v - v0)
        # positives: d/du -w log sigma(u.V) = -w sigma(-u.V) V
        a = w * _sigmoid(-(u[pair_item] * V[pair_partner]).sum(1))
        np.add.at(gu, pair_item, -a[:, None] * V[pair_partner])
        b = w * _sigmoid(-(U[pair_partner] * v[pair_item]).sum(1))
        np.add.at(gv, pair_item, -b[:, None] * U[pair_partner])
        # noise: d/du -w log sigma(-u.V) = w sigma(u.V) V
        c = neg_weight * _sigmoid((u[neg_item] * V[neg_row]).sum(1))
        np.add.at(gu, neg_item, c[:, None] * V[neg_row])
        e = neg_weight * _sigmoid((U[neg_row] * v[neg_item]).sum(1))
        np.add.at(gv, neg_item, e[:, None] * U[neg_row])
        for x, g, mom, sq in ((u, gu, mu, su), (v, gv, mv, sv)):  # Adam: the step size means the same for all
            mom *= b1
            mom += (1 - b1) * g
            sq *= b2
            sq += (1 - b2) * g * g
            x -= config.learning_rate * (mom / (1 - b1 ** step)) / (np.sqrt(sq / (1 - b2 ** step)) + eps)
    after = objective(u, v)
    check = {"items": int(m), "co_purchases": int(len(w)), "steps": config.steps,
             "log_likelihood_start": round(before, 4), "log_likelihood_after": round(after, 4),
             "mean_shift": round(float(np.linalg.norm(u - u0, axis=1).mean()) if m else 0.0, 4)}
    return u.astype(np.float32), v.astype(np.float32), check
