"""Typed events every policy emits, and the listener protocol metrics and tracing hook into.

The core knows no exporter: it calls listeners with frozen dataclasses, and the adapters
(Prometheus, OpenTelemetry, the dashboard) turn them into whatever they need. Events are only
built when a listener is registered, so an unobserved policy pays nothing for them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "BulkheadRejected",
    "CallRejected",
    "Emitter",
    "FallbackUsed",
    "HedgeLaunched",
    "Listener",
    "PolicyEvent",
    "RateLimitRejected",
    "RetryGaveUp",
    "RetryScheduled",
    "StateChanged",
]

_log = logging.getLogger("interlink.events")


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyEvent:
    """What happened, in which policy (``kind`` + ``name``), at which clock reading."""

    kind: str
    name: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(PolicyEvent):
    """A circuit breaker moved from ``old`` to ``new`` (state values, e.g. ``"open"``)."""

    old: str
    new: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRejected(PolicyEvent):
    """A breaker refused a call; ``remaining`` is the cooldown left, if any."""

    state: str
    remaining: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(PolicyEvent):
    """Attempt ``attempt`` failed with ``error``; the next starts after ``delay`` seconds."""

    attempt: int
    delay: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryGaveUp(PolicyEvent):
    """No more attempts: ``reason`` is ``"attempts"``, ``"budget"``, ``"deadline"`` or
    ``"not_retryable"``."""

    attempts: int
    reason: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadRejected(PolicyEvent):
    """A bulkhead refused a call: all slots busy and the queue full or timed out."""

    running: int
    queued: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitRejected(PolicyEvent):
    """A rate limiter had no token; the next one is due after ``retry_after`` seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeLaunched(PolicyEvent):
    """The primary attempt was slower than ``delay``; hedge number ``hedge`` was started."""

    hedge: int
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(PolicyEvent):
    """The call failed with ``error`` and the fallback answered from ``source``."""

    source: str
    error: str


class Listener(Protocol):
    """Anything callable with one event. Listeners run inline, so they must be quick."""

    def __call__(self, event: PolicyEvent, /) -> None: ...


class Emitter:
    """The listeners of one policy. A failing listener is logged, never propagated: telemetry
    must not change the outcome of the call it observes."""

    __slots__ = ("_listeners",)

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._listeners: tuple[Listener, ...] = tuple(listeners)

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def add(self, listener: Listener) -> None:
        """Register ``listener``; copy-on-write so emitting never needs a lock."""
        self._listeners = (*self._listeners, listener)

    def remove(self, listener: Listener) -> None:
        """Unregister ``listener``; a listener that was never added is ignored."""
        self._listeners = tuple(x for x in self._listeners if x is not listener)

    def emit(self, event: PolicyEvent) -> None:
        """Call every listener with ``event``."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("listener %r failed on %s", listener, type(event).__name__)
