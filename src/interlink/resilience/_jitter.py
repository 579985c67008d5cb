"""Backoff schedules: the delay before retry number ``attempt`` (0 for the first retry).

One function per jitter kind, picked once at construction so a retry never compares strings.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random

__all__ = ["JITTERS", "Schedule", "exponential", "schedule_of"]

# (attempt, prev_delay, rng) -> seconds
Schedule = Callable[[int, float, Random], float]

JITTERS = ("none", "full", "equal", "decorrelated")


def exponential(base: float, multiplier: float, max_delay: float, attempt: int) -> float:
    """``min(base * multiplier**attempt, max_delay)``, saturating instead of overflowing."""
    try:
        raw = base * multiplier**attempt
    except OverflowError:
        return max_delay
    return raw if raw < max_delay else max_delay


def schedule_of(kind: str, base: float, multiplier: float, max_delay: float) -> Schedule:
    """The schedule for jitter ``kind``; the caller has validated the numbers and the kind."""

    def none(attempt: int, prev: float, rng: Random) -> float:
        return exponential(base, multiplier, max_delay, attempt)

    def full(attempt: int, prev: float, rng: Random) -> float:
        return exponential(base, multiplier, max_delay, attempt) * rng.random()

    def equal(attempt: int, prev: float, rng: Random) -> float:
        half = exponential(base, multiplier, max_delay, attempt) / 2.0
        return half + half * rng.random()

    def decorrelated(attempt: int, prev: float, rng: Random) -> float:
        # AWS "decorrelated jitter": sleep = min(cap, uniform(base, prev * 3)), prev starting
        # at base. It grows from the previous delay rather than from the attempt number.
        high = prev * 3.0 if prev > base else base * 3.0
        delay = base + (high - base) * rng.random()
        return delay if delay < max_delay else max_delay

    schedules: dict[str, Schedule] = {
        "none": none,
        "full": full,
        "equal": equal,
        "decorrelated": decorrelated,
    }
    return schedules[kind]
