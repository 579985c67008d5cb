"""Passive outlier ejection, as Envoy does it: consecutive failures take an instance out.

After ``consecutive_failures`` failed calls in a row (connection refused, 5xx, UNAVAILABLE: the
client decides what a failure is and reports it through ``Picked.done(False)``) an instance is
ejected for ``base_ejection_time`` times the number of times it has been ejected, capped at
``max_ejection_time``; then it returns to rotation and has to fail again to leave. An instance
that stays in rotation for ``max_ejection_time`` after returning starts over at one.

``max_ejection_percent`` caps the share of a service's instances ejected at once (Envoy's
default is 10%, but with three instances that still allows one; interlink's 0.5 reads the same
for small pools and keeps half of a large pool serving when a bad deploy hits many at once).
The last instance in rotation is never ejected: with nowhere else to go, a failing instance
still beats an error the client manufactured itself.

Pure: no clock is read here, ``now`` comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

from interlink.resilience._validate import fraction, positive, positive_int

__all__ = [
    "DEFAULT_BASE_EJECTION_TIME",
    "DEFAULT_CONSECUTIVE_FAILURES",
    "DEFAULT_MAX_EJECTION_PERCENT",
    "DEFAULT_MAX_EJECTION_TIME",
    "OutlierDetector",
    "OutlierOptions",
    "OutlierState",
]

DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_BASE_EJECTION_TIME = 5.0
DEFAULT_MAX_EJECTION_TIME = 60.0
DEFAULT_MAX_EJECTION_PERCENT = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierOptions:
    """When to eject an instance and for how long; see the module docstring."""

    consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT

    def __post_init__(self) -> None:
        positive_int("consecutive_failures", self.consecutive_failures)
        positive("base_ejection_time", self.base_ejection_time)
        positive("max_ejection_time", self.max_ejection_time)
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"'max_ejection_time' must be >= base_ejection_time "
                f"({self.base_ejection_time!r}): {self.max_ejection_time!r}"
            )
        fraction("max_ejection_percent", self.max_ejection_percent)


class OutlierState:
    """One instance's failure streak and ejection record."""

    __slots__ = ("ejected_until", "ejections", "failures", "returned_at")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejected_until: float | None = None
        self.returned_at: float | None = None

    @property
    def ejected(self) -> bool:
        """Whether the instance is out of rotation."""
        return self.ejected_until is not None


class OutlierDetector:
    """Decides ejections and returns for the ``OutlierState`` objects of one service's pool."""

    __slots__ = ("_base", "_max_pct", "_max_time", "_threshold", "options")

    def __init__(self, options: OutlierOptions | None = None) -> None:
        self.options = options if options is not None else OutlierOptions()
        self._threshold = self.options.consecutive_failures
        self._base = self.options.base_ejection_time
        self._max_time = self.options.max_ejection_time
        self._max_pct = self.options.max_ejection_percent

    def success(self, state: OutlierState) -> None:
        """A call succeeded: the failure streak ends."""
        state.failures = 0

    def may_eject(self, total: int, ejected: int) -> bool:
        """Whether one more of ``total`` instances may go when ``ejected`` already are."""
        cap = max(1, int(self._max_pct * total + 1e-9))
        return ejected + 1 <= cap and ejected + 1 < total

    def failure(self, state: OutlierState, now: float, *, total: int, ejected: int) -> bool:
        """A call failed; True when this failure ejects the instance (until ``ejected_until``)."""
        state.failures += 1
        if state.failures < self._threshold or state.ejected_until is not None:
            return False
        if not self.may_eject(total, ejected):
            return False
        if state.returned_at is not None and now - state.returned_at >= self._max_time:
            state.ejections = 0  # behaved long enough since the last return: start over
        state.ejections += 1
        state.ejected_until = now + min(self._base * state.ejections, self._max_time)
        state.failures = 0
        return True

    def due(self, state: OutlierState, now: float) -> bool:
        """Whether an ejected instance has served its time."""
        until = state.ejected_until
        return until is not None and now >= until

    def restore(self, state: OutlierState, now: float) -> None:
        """Put an ejected instance back into rotation."""
        state.ejected_until = None
        state.failures = 0
        state.returned_at = now
