"""A breaker's settings and its metrics snapshot, as values.

Kept apart from the state machine so hundreds of breakers can share one validated options object
and tests can build and compare settings without a breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from interlink.resilience import _validate as v
from interlink.resilience._breaker_state import State

DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
DEFAULT_WINDOW = 30.0
DEFAULT_MINIMUM_CALLS = 10
DEFAULT_COOLDOWN = 60.0
DEFAULT_HALF_OPEN_CALLS = 1
DEFAULT_BUCKETS = 10
DEFAULT_CLOCK_EVERY = 64


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot: the window's figures, then lifetime totals since construction."""

    state: State
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    successes_total: int
    failures_total: int
    rejected_total: int


def _exception_types(name: str, types: object) -> tuple[type[BaseException], ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        raise ValueError(f"'{name}' must be a tuple of exception types: {types!r}")
    return types


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOptions:
    """A breaker's settings, validated once; share one object among many breakers and derive
    variants with ``dataclasses.replace``. See ``CircuitBreaker`` for what each one means."""

    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    window: float = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    cooldown: float = DEFAULT_COOLDOWN
    half_open_calls: int = DEFAULT_HALF_OPEN_CALLS
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 1.0
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    window_type: Literal["time", "count"] = "time"
    buckets: int = DEFAULT_BUCKETS
    clock_every: int = DEFAULT_CLOCK_EVERY

    def __post_init__(self) -> None:
        v.fraction("failure_rate_threshold", self.failure_rate_threshold)
        v.fraction("slow_call_rate_threshold", self.slow_call_rate_threshold)
        v.positive_int("minimum_calls", self.minimum_calls)
        v.non_negative("cooldown", self.cooldown)
        v.positive_int("half_open_calls", self.half_open_calls)
        if self.slow_call_duration is not None:
            v.positive("slow_call_duration", self.slow_call_duration)
        if self.window_type not in ("time", "count"):
            raise ValueError(f"'window_type' must be 'time' or 'count': {self.window_type!r}")
        if self.window_type == "time":
            v.positive("window", self.window)
        else:
            if isinstance(self.window, float) and not self.window.is_integer():
                raise ValueError(f"'window' must be a whole number of calls: {self.window!r}")
            v.positive_int("window", int(self.window))
        v.positive_int("buckets", self.buckets)
        every = self.clock_every
        if (
            isinstance(every, bool)
            or not isinstance(every, int)
            or every < 1
            or every & (every - 1)
        ):
            raise ValueError(f"'clock_every' must be a power of two >= 1: {every!r}")
        object.__setattr__(
            self, "record_exceptions", _exception_types("record_exceptions", self.record_exceptions)
        )
        object.__setattr__(
            self, "ignore_exceptions", _exception_types("ignore_exceptions", self.ignore_exceptions)
        )

    @property
    def guarded(self) -> bool:
        """Does every call need the clock (slow-call timing, count window, exact booking)?"""
        return (
            self.slow_call_duration is not None
            or self.window_type == "count"
            or self.clock_every == 1
        )


DEFAULT_OPTIONS = BreakerOptions()
