"""Backoff schedules: the delay before retry number ``attempt`` (0 for the first retry).

One function per jitter kind, picked once at construction so a retry never compares strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from random import Random

from interlink.resilience._validate import non_negative

__all__ = ["JITTERS", "Schedule", "checked", "exponential", "schedule_of"]

# (attempt, prev_delay, rng) -> seconds
Schedule = Callable[[int, float, Random], float]

JITTERS = ("none", "full", "equal", "decorrelated")


def checked(
    backoff: float, multiplier: float, max_backoff: float, jitter: str
) -> tuple[float, float, float]:
    """``backoff``, ``multiplier`` and ``max_backoff`` as floats, once they and ``jitter`` pass
    the rules of a schedule: for every option that describes one (``Retry``'s, and the HTTP
    clients' ``ServicePolicies``, which fail when loaded rather than at the first call)."""
    backoff = non_negative("backoff", backoff)
    if not isinstance(multiplier, int | float) or not (
        multiplier >= 1 and math.isfinite(multiplier)
    ):
        raise ValueError(f"'multiplier' must be a finite number >= 1: {multiplier!r}")
    max_backoff = non_negative("max_backoff", max_backoff)
    if max_backoff < backoff:
        raise ValueError(f"'max_backoff' must be >= backoff ({backoff!r}): {max_backoff!r}")
    if jitter not in JITTERS:
        allowed = ", ".join(repr(j) for j in JITTERS)
        raise ValueError(f"'jitter' must be one of {allowed}: {jitter!r}")
    return backoff, float(multiplier), max_backoff


def exponential(backoff: float, multiplier: float, max_backoff: float, attempt: int) -> float:
    """``min(backoff * multiplier**attempt, max_backoff)``, saturating instead of overflowing."""
    try:
        raw = backoff * multiplier**attempt
    except OverflowError:
        return max_backoff
    return raw if raw < max_backoff else max_backoff


def schedule_of(kind: str, backoff: float, multiplier: float, max_backoff: float) -> Schedule:
    """The schedule for jitter ``kind``; the caller has validated the numbers and the kind."""

    def none(attempt: int, prev: float, rng: Random) -> float:
        return exponential(backoff, multiplier, max_backoff, attempt)

    def full(attempt: int, prev: float, rng: Random) -> float:
        return exponential(backoff, multiplier, max_backoff, attempt) * rng.random()

    def equal(attempt: int, prev: float, rng: Random) -> float:
        half = exponential(backoff, multiplier, max_backoff, attempt) / 2.0
        return half + half * rng.random()

    def decorrelated(attempt: int, prev: float, rng: Random) -> float:
        # AWS "decorrelated jitter": sleep = min(cap, uniform(backoff, prev * 3)), prev starting
        # at backoff. It grows from the previous delay rather than from the attempt number.
        high = prev * 3.0 if prev > backoff else backoff * 3.0
        delay = backoff + (high - backoff) * rng.random()
        return delay if delay < max_backoff else max_backoff

    schedules: dict[str, Schedule] = {
        "none": none,
        "full": full,
        "equal": equal,
        "decorrelated": decorrelated,
    }
    return schedules[kind]
