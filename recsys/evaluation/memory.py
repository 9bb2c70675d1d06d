"""Peak resident memory of a block of work (a recommender's fit), by sampling /proc in a thread.

Sampling sees what numpy, torch, numba and FAISS allocate alike (tracemalloc
sees Python and numpy only). Memory freed and reused within one sampling
interval can be missed; the figure is the peak above the process's resident
size when the block started.
"""
from __future__ import annotations

import os
import threading

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):  # not Linux
        return None


class PeakMemory:
    """`with PeakMemory() as m: ...` then `m.peak_mb` (None where /proc is not available)."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self._start = resident_bytes()
        self._peak = self._start
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = resident_bytes()
            if now is not None and now > self._peak:
                self._peak = now

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        now = resident_bytes() or self._peak
        self.peak_mb = max(0, max(self._peak, now) - self._start) / 2**20
