"""A retry budget: retries may add at most a fixed share of load to a downstream.

Per-call ``attempts=3`` alone lets a failing downstream receive four times its normal load,
and every layer that retries multiplies that again: the retry storm that keeps an outage going.
A budget shared by every caller of one downstream caps the total instead (Finagle's
``RetryBudget``, tower's ``TpsBudget``): each first attempt deposits, each retry withdraws, and
within ``ttl`` seconds retries are allowed only up to ``ratio`` * first attempts in that window
plus a floor of ``min_per_second`` * ``ttl`` so that low-traffic callers can still retry.

Deposits and withdrawals are kept in a ring of ``_BUCKETS`` time buckets over ``ttl``, so they
expire after between ``ttl - ttl/_BUCKETS`` and ``ttl`` seconds, every operation is O(1) and
memory stays fixed whatever the traffic.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from interlink.clock import Clock
from interlink.resilience._validate import ReadOnly, described, non_negative, positive

__all__ = ["BudgetSnapshot", "RetryBudget"]

_BUCKETS = 10
# Float slack so that e.g. ratio 0.57 x 100 deposits still grants the 57th retry.
_EPSILON = 1e-9


def _counter() -> Callable[[], int]:
    return itertools.count().__next__


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSnapshot:
    """The budget's window at one instant: ``deposits`` first attempts and ``retries``
    granted in the window, ``refused`` retries since creation, ``balance`` retries allowed now."""

    deposits: int
    retries: int
    refused: int
    balance: float


class RetryBudget:
    """Retries allowed to one downstream, shared by all its callers across threads and tasks.

    ``deposit()`` is called on every first attempt, so it takes no lock: it reads the clock and
    bumps the current bucket's ``itertools.count`` (atomic under the GIL). ``try_withdraw()``,
    called only before a retry, takes the lock and is exact. ``ratio=0.2, min_per_second=10,
    ttl=10`` (Finagle's defaults) lets retries add 20 % on top of the traffic, or 100 retries
    per 10 s when there is little traffic.
    """

    __slots__ = (
        "_booked",
        "_clock",
        "_closed",
        "_counters",
        "_cur",
        "_edge",
        "_lock",
        "_min_per_second",
        "_name",
        "_ratio",
        "_reads",
        "_refused",
        "_reserve",
        "_tick",
        "_ttl",
        "_width",
        "_withdrawals",
        "_withdrawn",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10,
        ttl: float = 10.0,
        *,
        name: str = "retry-budget",
        clock: Clock = time.monotonic,
    ) -> None:
        self._ratio = non_negative("ratio", ratio)
        self._min_per_second = non_negative("min_per_second", min_per_second)
        self._ttl = positive("ttl", ttl)
        self._name = name
        self._clock = clock
        self._reserve = self._min_per_second * self._ttl
        self._width = self._ttl / _BUCKETS
        self._lock = threading.Lock()
        # Ring of buckets; slot ``k % _BUCKETS`` holds absolute bucket ``k``. The current bucket
        # counts deposits in its lock-free counter; a closed bucket's count is booked in
        # ``_booked`` when it closes (``_closed`` is their sum) and dropped when it expires.
        self._counters = [_counter() for _ in range(_BUCKETS)]
        self._booked = [0] * _BUCKETS
        self._withdrawals = [0] * _BUCKETS
        self._closed = 0
        self._withdrawn = 0
        self._refused = 0
        self._cur = int(clock() // self._width)
        self._edge = (self._cur + 1) * self._width
        self._tick = self._counters[self._cur % _BUCKETS]
        # Reading a count is ``next()``, which adds one: ``_reads`` undoes those reads.
        self._reads = 0

    name: ReadOnly[str] = ReadOnly("_name", "The name used in errors and events.")
    ratio: ReadOnly[float] = ReadOnly("_ratio", "Retries allowed per first attempt in the window.")
    min_per_second: ReadOnly[float] = ReadOnly(
        "_min_per_second", "The floor: retries per second allowed even without traffic."
    )
    ttl: ReadOnly[float] = ReadOnly("_ttl", "Seconds a deposit or a withdrawal counts for.")
    clock: ReadOnly[Clock] = ReadOnly(
        "_clock", "The clock the window is read on (``deposit(now)`` takes a reading of it)."
    )

    def deposit(self, now: float | None = None) -> None:
        """Record one first attempt. Lock-free; call it once per call, before the first try
        (``now``: a reading of ``clock`` the caller took at the first attempt, which saves
        reading it again)."""
        if (self._clock() if now is None else now) >= self._edge:
            self._rotate()
        self._tick()

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when none is left."""
        with self._lock:
            if self._clock() >= self._edge:
                self._advance()
            allowed = self._ratio * (self._closed + self._current()) + self._reserve
            if self._withdrawn + 1 <= allowed + _EPSILON:
                self._withdrawn += 1
                self._withdrawals[self._cur % _BUCKETS] += 1
                return True
            self._refused += 1
            return False

    @property
    def balance(self) -> float:
        """Retries allowed right now (a withdrawal needs at least 1)."""
        return self.snapshot().balance

    def snapshot(self) -> BudgetSnapshot:
        """The counts of the current window, read consistently under the lock."""
        with self._lock:
            if self._clock() >= self._edge:
                self._advance()
            deposits = self._closed + self._current()
            balance = self._ratio * deposits + self._reserve - self._withdrawn
            return BudgetSnapshot(
                deposits=deposits,
                retries=self._withdrawn,
                refused=self._refused,
                balance=balance if balance > 0.0 else 0.0,
            )

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()`` and logs."""
        return described("retry_budget", self._name, self, ("ratio", "min_per_second", "ttl"))

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self._ratio!r}, min_per_second={self._min_per_second!r}, "
            f"ttl={self._ttl!r}, name={self._name!r})"
        )

    # -- under the lock ------------------------------------------------------------------

    def _current(self) -> int:
        n = self._tick() - self._reads
        self._reads += 1
        return n

    def _rotate(self) -> None:
        with self._lock:
            if self._clock() >= self._edge:
                self._advance()

    def _advance(self) -> None:
        now_k = int(self._clock() // self._width)
        if now_k <= self._cur:  # float rounding at the edge: we are past it by definition
            now_k = self._cur + 1
        closing = self._cur % _BUCKETS
        booked = self._current()
        self._booked[closing] = booked
        self._closed += booked
        # Recycle the slots of the buckets that fall out of the window, oldest first; after a
        # pause longer than ttl that is every slot, so the loop never runs more than _BUCKETS.
        first = max(self._cur + 1, now_k - _BUCKETS + 1)
        if now_k - self._cur >= _BUCKETS:
            self._closed = 0
            self._withdrawn = 0
            self._booked = [0] * _BUCKETS
            self._withdrawals = [0] * _BUCKETS
        for k in range(first, now_k + 1):
            slot = k % _BUCKETS
            self._closed -= self._booked[slot]
            self._withdrawn -= self._withdrawals[slot]
            self._booked[slot] = 0
            self._withdrawals[slot] = 0
            self._counters[slot] = _counter()
        # A deposit that read the old ``_tick`` just before this swap still lands in a closed
        # bucket's counter and is lost; under the GIL the load and the call do not interleave.
        self._tick = self._counters[now_k % _BUCKETS]
        self._reads = 0
        self._cur = now_k
        self._edge = (now_k + 1) * self._width
