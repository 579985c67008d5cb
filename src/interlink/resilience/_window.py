"""Sliding windows of call outcomes for the circuit breaker.

Both windows keep running totals, so adding an outcome and reading the rates are O(1) and the
memory is fixed by the configuration, whatever the call rate. Neither is thread-safe on its own:
the breaker calls them under its lock, on the (rare) paths that need exact bookkeeping.
"""

from __future__ import annotations

__all__ = ["CountWindow", "TimeWindow"]

_FAILED = 1
_SLOW = 2


class TimeWindow:
    """Outcomes of the last ``size`` seconds in ``buckets`` equal buckets.

    The window is the current (partial) bucket plus the ``buckets - 1`` before it, so an outcome
    counts for between ``size - size/buckets`` and ``size`` seconds: the price of O(1) memory.
    Buckets are numbered by ``floor(now / width)``; moving to a later bucket clears the ones the
    window slid past.
    """

    __slots__ = ("_calls", "_fails", "_head", "_n", "_slows", "_width", "calls", "failures", "slow")

    def __init__(self, size: float, buckets: int) -> None:
        self._n = buckets
        self._width = size / buckets
        self._calls = [0] * buckets
        self._fails = [0] * buckets
        self._slows = [0] * buckets
        self._head: int | None = None
        self.calls = 0
        self.failures = 0
        self.slow = 0

    @property
    def width(self) -> float:
        """Seconds per bucket."""
        return self._width

    def advance(self, now: float) -> None:
        """Make the bucket holding ``now`` current, dropping what slid out of the window."""
        k = int(now // self._width)
        head = self._head
        if head is None:
            self._head = k
            return
        if k <= head:  # same bucket, or a clock that stepped back: keep what we have
            return
        n = self._n
        if k - head >= n:
            self.reset()
        else:
            calls, fails, slows = self._calls, self._fails, self._slows
            for j in range(head + 1, k + 1):
                i = j % n
                self.calls -= calls[i]
                self.failures -= fails[i]
                self.slow -= slows[i]
                calls[i] = fails[i] = slows[i] = 0
        self._head = k

    def add(self, calls: int, failures: int, slow: int) -> None:
        """Book outcomes into the current bucket (``advance`` must have run at least once)."""
        i = (self._head or 0) % self._n
        self._calls[i] += calls
        self._fails[i] += failures
        self._slows[i] += slow
        self.calls += calls
        self.failures += failures
        self.slow += slow

    def reset(self) -> None:
        """Forget every outcome (the breaker starts a fresh window when it closes)."""
        n = self._n
        self._calls = [0] * n
        self._fails = [0] * n
        self._slows = [0] * n
        self.calls = self.failures = self.slow = 0


class CountWindow:
    """Outcomes of the last ``size`` calls, one byte each in a ring."""

    __slots__ = ("_pos", "_ring", "_size", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = bytearray(size)
        self._pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> None:
        """Time plays no part in a count window."""

    def add(self, calls: int, failures: int, slow: int) -> None:
        """Book ``calls`` outcomes, the first ``failures`` of them failed, ``slow`` of them slow."""
        ring, size = self._ring, self._size
        for j in range(calls):
            flags = (_FAILED if j < failures else 0) | (_SLOW if j < slow else 0)
            pos = self._pos
            if self.calls == size:
                old = ring[pos]
                self.failures -= old & _FAILED
                self.slow -= (old & _SLOW) >> 1
            else:
                self.calls += 1
            ring[pos] = flags
            self.failures += flags & _FAILED
            self.slow += (flags & _SLOW) >> 1
            self._pos = pos + 1 if pos + 1 < size else 0

    def reset(self) -> None:
        """Forget every outcome."""
        self._ring = bytearray(self._size)
        self._pos = 0
        self.calls = self.failures = self.slow = 0
