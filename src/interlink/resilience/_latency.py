"""Recent latencies in a fixed ring, and a cached percentile of them.

An adaptive hedge asks for its delay on every call, so reading must be cheap and recording
cheaper: ``record`` is one slot write (O(1), no allocation), and the percentile is sorted out
lazily, at most once every ``refresh`` records. A percentile that lags a few calls behind is
fine for a delay; sorting hundreds of floats on every call is not.

Safe to share between threads and tasks without a lock: the slot index comes from
``itertools.count`` (atomic under the GIL) and list item assignment is atomic. A race can only
make the cached value a few records staler, never wrong in kind.
"""

from __future__ import annotations

import itertools
import math

from interlink.resilience._validate import fraction, positive_int

__all__ = ["LatencyTracker"]


class LatencyTracker:
    """The last ``size`` latencies (seconds) and their ``percentile`` (nearest rank).

    ``value()`` is None until ``min_samples`` latencies were recorded, so a caller can fall back
    to a configured default instead of trusting a percentile of three samples.
    """

    __slots__ = ("_cached", "_cached_at", "_min", "_next", "_p", "_recorded", "_refresh", "_ring")

    def __init__(
        self,
        size: int = 512,
        *,
        percentile: float = 0.95,
        min_samples: int = 20,
        refresh: int = 16,
    ) -> None:
        positive_int("size", size)
        positive_int("min_samples", min_samples)
        positive_int("refresh", refresh)
        if min_samples > size:
            raise ValueError(f"'min_samples' must be <= size ({size}): {min_samples!r}")
        self._p = fraction("percentile", percentile)
        self._ring = [0.0] * size
        self._next = itertools.count().__next__
        self._recorded = 0
        self._min = min_samples
        self._refresh = refresh
        self._cached: float | None = None
        self._cached_at = 0

    def __len__(self) -> int:
        """How many latencies the ring holds now (at most ``size``)."""
        return min(self._recorded, len(self._ring))

    @property
    def recorded(self) -> int:
        """How many latencies were recorded in total."""
        return self._recorded

    def record(self, seconds: float) -> None:
        """Add one latency, overwriting the oldest once the ring is full."""
        i = self._next()
        ring = self._ring
        ring[i % len(ring)] = seconds
        self._recorded = i + 1

    def value(self) -> float | None:
        """The percentile of the held latencies, or None before ``min_samples`` records."""
        n = self._recorded
        if n < self._min:
            return None
        cached = self._cached
        if cached is not None and n - self._cached_at < self._refresh:
            return cached
        ring = self._ring
        data = sorted(ring if n >= len(ring) else ring[:n])
        # Nearest rank; the epsilon keeps float noise (0.7 * 10 == 7.000000000000001) from
        # pushing the rank one past the exact one.
        cached = data[max(math.ceil(self._p * len(data) - 1e-9), 1) - 1]
        self._cached = cached
        self._cached_at = n
        return cached
