"""The chronological split: the last share of purchase lines by time is the test period."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from recsys.data.dataset import Dataset, subset_purchases  # noqa: F401  (re-exported: callers import it from here)


@dataclass
class ChronologicalSplit:
    train: Dataset  # full catalogue, training-period purchases only
    test_mask: np.ndarray  # bool over the full dataset's purchase lines
    test_starts_at: int  # test lines are exactly those with purchase_time >= this

    @property
    def n_test(self) -> int:
        return int(self.test_mask.sum())


def split_chronological(ds: Dataset, test_fraction: float = 0.15) -> ChronologicalSplit:
    """Last `test_fraction` of purchases by time = test.

    All lines sharing the cut timestamp go to the same side: to the test side
    unless keeping them in training lands closer to the requested fraction
    (or test would swallow everything).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = ds.n_purchases
    if n < 2:
        raise ValueError(f"need at least 2 purchases to split, the dataset has {n}")
    times = np.sort(ds.purchase_time)
    target = test_fraction * n
    cut = times[n - max(1, int(round(target)))]
    n_ties_in = n - int(np.searchsorted(times, cut, "left"))  # test = time >= cut
    n_ties_out = n - int(np.searchsorted(times, cut, "right"))  # test = time > cut
    options = [(abs(n_ties_in - target), 0, n_ties_in), (abs(n_ties_out - target), 1, n_ties_out)]
    options = [o for o in options if 0 < o[2] < n]
    if not options:
        raise ValueError("all purchases share one timestamp: a chronological split is impossible")
    _, ties_out, n_test = min(options)
    starts_at = int(times[n - n_test])
    test_mask = ds.purchase_time >= starts_at
    assert int(test_mask.sum()) == n_test
    return ChronologicalSplit(train=subset_purchases(ds, ~test_mask), test_mask=test_mask,
                              test_starts_at=starts_at)
