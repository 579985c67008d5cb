"""What the demo measures: per-phase counters while it runs, frozen results when it is done."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["DemoResult", "PhaseRecorder", "PhaseStats", "Transition", "percentile"]


@dataclass(frozen=True, slots=True)
class Transition:
    """The breaker moved from ``old`` to ``new`` ``at`` seconds after the demo started."""

    at: float
    old: str
    new: str

    def __str__(self) -> str:
        return f"+{self.at:.1f}s {self.old.replace('_', '-')}→{self.new.replace('_', '-')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PhaseStats:
    """One phase as the caller and the downstream saw it; times in seconds.

    ``calls`` = ``successes`` (a fresh answer to this very call) + ``fallbacks`` (the cached answer
    of an earlier call) + ``errors`` (no answer at all). ``sent`` counts the attempts the breaker
    let through (retries included), ``reached`` the requests the downstream actually read.
    """

    name: str
    started: float
    duration: float
    calls: int
    successes: int
    fallbacks: int
    errors: int
    p50: float
    p99: float
    slowest: float
    fallback_p99: float
    sent: int
    reached: int
    retries: int
    budget_refusals: int
    transitions: tuple[Transition, ...]
    breaker_state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """Everything one run measured, phase by phase, plus where the downstream listened."""

    seed: int
    port: int
    timeout: float
    slow_delay: float
    phases: tuple[PhaseStats, ...]
    duration: float

    def phase(self, name: str) -> PhaseStats:
        """The phase called ``name``; KeyError if there is none."""
        for stats in self.phases:
            if stats.name == name:
                return stats
        raise KeyError(name)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of sorted values; 0.0 when empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class PhaseRecorder:
    """Mutable counters for one phase, written by the load generator and the listeners."""

    name: str
    started: float
    planned: float
    ended: float | None = None
    successes: int = 0
    fallbacks: int = 0
    errors: int = 0
    sent: int = 0
    reached_before: int = 0
    reached_after: int | None = None
    retries: int = 0
    budget_refusals: int = 0
    latencies: list[float] = field(default_factory=list)
    fallback_latencies: list[float] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    breaker_state: str = "closed"

    @property
    def calls(self) -> int:
        """Calls finished so far."""
        return self.successes + self.fallbacks + self.errors

    def reached(self, server_total: int) -> int:
        """Requests the downstream read during this phase (so far, while it runs)."""
        end = self.reached_after if self.reached_after is not None else server_total
        return end - self.reached_before

    def freeze(self, server_total: int, *, now: float | None = None) -> PhaseStats:
        """The phase as a ``PhaseStats``; ``now`` ends a phase still running (for live views)."""
        ordered = sorted(self.latencies)
        if self.ended is not None:
            ended = self.ended
        else:
            ended = now if now is not None else self.started + self.planned
        return PhaseStats(
            name=self.name,
            started=self.started,
            duration=ended - self.started,
            calls=self.calls,
            successes=self.successes,
            fallbacks=self.fallbacks,
            errors=self.errors,
            p50=percentile(ordered, 50),
            p99=percentile(ordered, 99),
            slowest=ordered[-1] if ordered else 0.0,
            fallback_p99=percentile(sorted(self.fallback_latencies), 99),
            sent=self.sent,
            reached=self.reached(server_total),
            retries=self.retries,
            budget_refusals=self.budget_refusals,
            transitions=tuple(self.transitions),
            breaker_state=self.breaker_state,
        )
