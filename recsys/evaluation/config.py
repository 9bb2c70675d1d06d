"""What the offline protocol measures: the split, the baskets, K, how many queries."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    test_fraction: float = 0.15
    session_gap_s: int = 3600
    ks: tuple[int, ...] = (10, 20, 50)
    max_queries: int = 20000  # per segment (warm, cold); sampled with `seed` when more
    seed: int = 0
    include_link_prediction: bool = True
    link_prediction_max_edges: int = 200_000  # hidden edges scored (sampled when more)
    chunk_bytes: int = 256 << 20  # memory for one chunk of dense score rows

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.session_gap_s < 0:
            raise ValueError(f"session_gap_s must be >= 0, got {self.session_gap_s}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be >= 1, got {self.max_queries}")
