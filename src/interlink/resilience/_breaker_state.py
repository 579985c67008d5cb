"""The breaker's state word and the bookkeeping behind it.

The closed fast path decides with one integer test, so the state, a "guarded" flag and a
generation are packed into one word, ``_g``; the pipelines, the gRPC client and the generated
decorator read it directly, which is why these constants live apart from the class.
"""

from __future__ import annotations

import itertools
from enum import Enum

from interlink.resilience._window import CountWindow, TimeWindow


class State(Enum):
    """Where a breaker stands; the value is what events and metrics report."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


# The state word ``_g``: bits 0-2 the state, bit 3 "guarded" (this breaker needs the clock on
# every call: slow-call detection, a count window or clock_every=1), bits 4+ a generation that
# changes on every transition. The closed fast path is taken when ``_g & 15 == 0``.
_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _DISABLED = 0, 1, 2, 3, 4
_STATE_BITS = 7
_GUARDED = 8
_FAST_MASK = 15
_GEN = 16
_STATES = (State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN, State.DISABLED)


def _count_value(counter: itertools.count[int]) -> int:
    # itertools.count has no public read; its repr is stable ("count(41)") on every CPython.
    return int(repr(counter)[6:-1])


class _Live:
    """A breaker's bookkeeping, made on first use (under the breaker's lock)."""

    __slots__ = (
        "admitted",
        "booked",
        "failures_total",
        "guarded_successes",
        "last_tick",
        "trials_ok",
        "win",
    )

    def __init__(self) -> None:
        self.win: TimeWindow | CountWindow | None = None
        self.booked = 0
        self.guarded_successes = 0
        self.failures_total = 0
        self.last_tick = 0.0
        self.admitted = 0
        self.trials_ok = 0
