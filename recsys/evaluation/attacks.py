"""Fake-purchase attacks on a shop's training period, and what they do to the lists.

An attack adds fake accounts whose baskets pair one *target* item (of middling
popularity) with popular items, so that the target climbs into the popular
items' similar-item lists (a bandwagon / push attack; Pinterest measured a 2%
precision drop from fake saves). Three shapes, each with the same number of
fake baskets for a given size, so they compare at equal effort:

* "bandwagon": `share` x users new accounts, one basket each, spread over
  the whole period: the target with `popular_per_basket` items drawn from
  the `n_popular` most bought.
* "burst": the same accounts and baskets, all within `burst_window_s` near
  the end of the period (a campaign of freshly made accounts).
* "heavy": the same baskets placed in few accounts (`baskets_per_heavy`
  baskets each), spread over the period.

`promotion` measures the effect: the share of the popular items whose top k
contains the target, and the target's mean rank in those lists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recsys.data.dataset import Dataset, Watermark

SHAPES = ("bandwagon", "burst", "heavy")


@dataclass(frozen=True)
class AttackConfig:
    shape: str = "bandwagon"  # one of SHAPES
    share: float = 0.01  # fake accounts (bandwagon, burst) as a share of the period's real accounts
    n_popular: int = 100  # the popular items the target is pushed into
    popular_per_basket: int = 5  # popular items in each fake basket beside the target
    target_quantile: float = 0.5  # the target's popularity quantile among items bought >= min_target_buys
    min_target_buys: int = 5
    burst_window_s: int = 86_400
    baskets_per_heavy: int = 20  # "heavy": fake baskets per account
    seed: int = 0

    def validate(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"AttackConfig.shape must be one of {SHAPES}, got {self.shape!r}")
        if not 0 < self.share < 1:
            raise ValueError(f"AttackConfig.share must be in (0, 1), got {self.share}")
        if self.n_popular < 1 or self.popular_per_basket < 1 or self.baskets_per_heavy < 1:
            raise ValueError("AttackConfig: n_popular, popular_per_basket and baskets_per_heavy must be >= 1")


@dataclass
class Attack:
    """An attacked copy of a data set and what was planted in it."""

    data: Dataset
    target: int  # item position of the pushed item
    popular: np.ndarray  # item positions of the items it is pushed into
    fake_users: np.ndarray  # user codes of the fake accounts in `data`
    n_fake_lines: int
    config: AttackConfig


def choose_target(ds: Dataset, config: AttackConfig) -> int:
    """An item of middling popularity outside the popular set (deterministic)."""
    counts = np.bincount(ds.purchase_item, minlength=ds.n_items)
    popular = set(np.argsort(-counts, kind="stable")[:config.n_popular].tolist())
    eligible = np.array([i for i in np.flatnonzero(counts >= config.min_target_buys) if i not in popular])
    if len(eligible) == 0:
        raise ValueError(f"no item bought at least {config.min_target_buys} times outside the "
                         f"{config.n_popular} most bought: nothing to push")
    eligible = eligible[np.lexsort((eligible, counts[eligible]))]
    return int(eligible[min(len(eligible) - 1, int(config.target_quantile * len(eligible)))])


def inject(ds: Dataset, config: AttackConfig = AttackConfig(), target: int | None = None) -> Attack:
    """`ds` with fake accounts added (see the module docstring); the real lines are untouched."""
    config.validate()
    if ds.n_purchases == 0:
        raise ValueError("cannot attack a data set without purchases")
    rng = np.random.default_rng(config.seed)
    counts = np.bincount(ds.purchase_item, minlength=ds.n_items)
    popular = np.argsort(-counts, kind="stable")[:config.n_popular]
    target = choose_target(ds, config) if target is None else int(target)
    n_real_users = len(np.unique(ds.purchase_user))
    n_baskets = max(1, int(round(config.share * n_real_users)))
    start, end = int(ds.purchase_time.min()), int(ds.purchase_time.max())
    if config.shape == "burst":
        lo = max(start, end - 2 * config.burst_window_s)
        times = lo + rng.integers(0, config.burst_window_s, n_baskets)
    else:
        times = rng.integers(start, end + 1, n_baskets)
    if config.shape == "heavy":
        n_accounts = max(1, -(-n_baskets // config.baskets_per_heavy))
        account_of_basket = np.arange(n_baskets) % n_accounts
    else:
        n_accounts = n_baskets
        account_of_basket = np.arange(n_baskets)
    per = min(config.popular_per_basket, len(popular))
    picks = np.argsort(rng.random((n_baskets, len(popular))), axis=1)[:, :per]
    basket_items = np.concatenate([np.full((n_baskets, 1), target), popular[picks]], axis=1)
    lines_per = basket_items.shape[1]

    first_fake = ds.n_users
    user = np.repeat(first_fake + account_of_basket, lines_per).astype(np.int32)
    item = basket_items.ravel().astype(np.int32)
    time = np.repeat(times, lines_per).astype(np.int64)
    order_base = int(ds.purchase_order.max()) + 1 if len(ds.purchase_order) else 0
    order = np.repeat(order_base + np.arange(n_baskets), lines_per).astype(np.int64)
    quantity = np.ones(len(item), np.int32)

    all_user = np.concatenate([ds.purchase_user, user])
    all_time = np.concatenate([ds.purchase_time, time])
    perm = np.lexsort((np.arange(len(all_user)), all_time, all_user))
    fake_ids = np.array([f"fake-{config.shape}-{k:06d}" for k in range(n_accounts)], dtype=object)
    attacked = dataclasses.replace(
        ds,
        purchase_user=all_user[perm],
        purchase_item=np.concatenate([ds.purchase_item, item])[perm],
        purchase_time=all_time[perm],
        purchase_order=np.concatenate([ds.purchase_order, order])[perm],
        purchase_quantity=np.concatenate([ds.purchase_quantity, quantity])[perm],
        user_ids=np.concatenate([ds.user_ids, fake_ids]),
        watermark=Watermark(max_purchased_at=int(all_time.max()),
                            max_item_updated_at=ds.watermark.max_item_updated_at if ds.watermark else None,
                            n_items=ds.n_items, n_purchases=len(all_time)),
    )
    attacked.validate()
    return Attack(attacked, target, popular, first_fake + np.arange(n_accounts), len(item), config)


def promotion(score_warm, target: int, popular: np.ndarray, candidates: np.ndarray, k: int = 20) -> dict:
    """How far the target got into the popular items' top k.

    score_warm: anchors -> (n_anchors, n_items) scores (a recommender's);
    candidates: bool per item, the items a list may hold (the anchor itself never).
    """
    popular = np.asarray(popular, np.int64)
    scores = np.asarray(score_warm(popular), np.float64)
    scores[:, ~np.asarray(candidates, bool)] = -np.inf
    scores[np.arange(len(popular)), popular] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hit = top == target
    in_list = hit.any(axis=1)
    ranks = np.argmax(hit, axis=1)[in_list] + 1
    return {"lists": int(len(popular)), "share_with_target": float(in_list.mean()),
            "mean_rank_when_listed": float(ranks.mean()) if len(ranks) else None}
