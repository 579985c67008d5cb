"""Typed events every policy emits, and the listener protocol metrics and tracing hook into.

The core knows no exporter: it calls listeners with frozen dataclasses, and the adapters
(Prometheus, OpenTelemetry, the dashboard) turn them into whatever they need. Events are only
built when a listener is registered, so an unobserved policy pays nothing for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, dataclass_transform

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
    "TimeoutExpired",
]

_log = logging.getLogger("interlink.events")

E = TypeVar("E")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def _event(cls: type[E]) -> type[E]:
    """Every event is a frozen, slotted dataclass whose fields are passed by name."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


@_event
class PolicyEvent:
    """What happened, in which policy (``kind`` + ``name``), at which clock reading."""

    kind: str
    name: str
    at: float


@_event
class StateChanged(PolicyEvent):
    """A circuit breaker moved from ``old`` to ``new`` (state values, e.g. ``"open"``)."""

    old: str
    new: str


@_event
class CallRejected(PolicyEvent):
    """A breaker refused a call; ``remaining`` is the cooldown left, if any."""

    state: str
    remaining: float | None


@_event
class RetryScheduled(PolicyEvent):
    """Attempt ``attempt`` failed with ``error``; the next starts after ``delay`` seconds."""

    attempt: int
    delay: float
    error: str


@_event
class RetryGaveUp(PolicyEvent):
    """Gave up after ``attempts`` calls (the first included): ``reason`` is ``"retries"`` (all
    spent), ``"budget"``, ``"deadline"`` or ``"not_retryable"``."""

    attempts: int
    reason: str
    error: str


@_event
class BulkheadRejected(PolicyEvent):
    """A bulkhead refused a call: all slots busy and the queue full or timed out."""

    running: int
    queued: int


@_event
class RateLimitRejected(PolicyEvent):
    """A rate limiter had no token; the next one is due after ``retry_after`` seconds."""

    retry_after: float


@_event
class HedgeLaunched(PolicyEvent):
    """The primary attempt was slower than ``delay``; hedge number ``hedge`` was started."""

    hedge: int
    delay: float


@_event
class FallbackUsed(PolicyEvent):
    """The call failed with ``error`` and the fallback answered from ``source``."""

    source: str
    error: str


@_event
class TimeoutExpired(PolicyEvent):
    """A timeout of ``seconds`` ended a call: cut off while running, or (``started`` False)
    refused because the deadline in force had already passed."""

    seconds: float
    started: bool


class Listener(Protocol):
    """Anything callable with one event. Listeners run inline, so they must be quick."""

    def __call__(self, event: PolicyEvent, /) -> None: ...


class Emitter(list[Listener]):
    """The listeners of one policy. A failing listener is logged, never propagated: telemetry
    must not change the outcome of the call it observes.

    A ``list`` subclass so that ``if self._events:`` (asked on hot paths, e.g. every rejection)
    is a C-level length check rather than a Python ``__bool__`` call.
    """

    __slots__ = ()

    def add(self, listener: Listener) -> None:
        """Register ``listener``."""
        self.append(listener)

    def remove(self, listener: Listener) -> None:
        """Unregister ``listener``; a listener that was never added is ignored."""
        if listener in self:
            super().remove(listener)

    def emit(self, event: PolicyEvent) -> None:
        """Call every listener with ``event``."""
        for listener in tuple(self):
            try:
                listener(event)
            except Exception:
                _log.exception("listener %r failed on %s", listener, type(event).__name__)


class Observed:
    """The listener side every policy shares: its ``Emitter`` (``_events``), the two
    methods that change it and the one way its events are built, written once so that every
    policy is observed the same way."""

    __slots__ = ("_events",)

    #: The policy's ``kind`` in its events and its ``describe()`` (``"retry"``...).
    _kind: ClassVar[str]

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self._events = Emitter(listeners)

    def add_listener(self, listener: Listener) -> None:
        """Receive this policy's events (named in its docstring) from now on."""
        self._events.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop receiving events; a listener that was never added is ignored."""
        self._events.remove(listener)

    def _emit(self, event: Callable[..., PolicyEvent], name: str, at: float, **fields: Any) -> None:
        """Tell the listeners ``event`` of this policy named ``name``, at clock reading ``at``.
        Called only when ``self._events`` is not empty: an unobserved policy builds nothing."""
        self._events.emit(event(kind=self._kind, name=name, at=at, **fields))
