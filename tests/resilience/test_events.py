"""Events: every policy can be observed after construction, and telemetry never breaks a call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from interlink.errors import BulkheadFull, DeadlineExceeded, RateLimited
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.events import (
    BulkheadRejected,
    Emitter,
    FallbackUsed,
    HedgeLaunched,
    PolicyEvent,
    RateLimitRejected,
    RetryScheduled,
    StateChanged,
    TimeoutExpired,
)
from interlink.resilience.fallback import Fallback
from interlink.resilience.hedge import Hedge
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout
from interlink.testing import FakeClock


class Boom(Exception):
    """A downstream failure."""


def boom() -> None:
    raise Boom


def _breaker() -> tuple[CircuitBreaker, Callable[[], None]]:
    breaker = CircuitBreaker("b", clock=FakeClock())
    return breaker, breaker.force_open


def _retry() -> tuple[Retry, Callable[[], None]]:
    clock = FakeClock()
    retry = Retry(1, jitter="none", clock=clock)

    def trigger() -> None:
        with pytest.raises(Boom):
            retry.call(boom)

    return retry, trigger


def _hedge() -> tuple[Hedge, Callable[[], None]]:
    clock = FakeClock()
    hedge = Hedge(0.1, clock=clock)
    calls = 0

    async def first_slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # never answers; cancelled when the hedge wins
        return "hedged"

    def trigger() -> None:
        assert asyncio.run(hedge.acall(first_slow)) == "hedged"

    return hedge, trigger


def _bulkhead() -> tuple[Bulkhead, Callable[[], None]]:
    bulkhead = Bulkhead(1, clock=FakeClock())

    def trigger() -> None:
        with bulkhead, pytest.raises(BulkheadFull):
            bulkhead.call(lambda: None)

    return bulkhead, trigger


def _limiter() -> tuple[RateLimiter, Callable[[], None]]:
    limiter = RateLimiter(1.0, 1, clock=FakeClock())

    def trigger() -> None:
        limiter.try_acquire()
        with pytest.raises(RateLimited):
            limiter.call(lambda: None)

    return limiter, trigger


def _fallback() -> tuple[Fallback, Callable[[], None]]:
    fallback = Fallback(value="cached", clock=FakeClock())

    def trigger() -> None:
        assert fallback.call(boom) == "cached"

    return fallback, trigger


def _timeout() -> tuple[Timeout, Callable[[], None]]:
    timeout = Timeout(0.01)

    def trigger() -> None:
        with pytest.raises(DeadlineExceeded):
            asyncio.run(timeout.acall(asyncio.sleep, 5))

    return timeout, trigger


POLICIES: list[tuple[Callable[[], tuple[Any, Callable[[], None]]], type[PolicyEvent]]] = [
    (_breaker, StateChanged),
    (_retry, RetryScheduled),
    (_hedge, HedgeLaunched),
    (_bulkhead, BulkheadRejected),
    (_limiter, RateLimitRejected),
    (_fallback, FallbackUsed),
    (_timeout, TimeoutExpired),
]
IDS = ["breaker", "retry", "hedge", "bulkhead", "rate_limiter", "fallback", "timeout"]


@pytest.mark.parametrize(("make", "kind"), POLICIES, ids=IDS)
def test_listener_added_after_construction_sees_events(
    make: Callable[[], tuple[Any, Callable[[], None]]], kind: type[PolicyEvent]
) -> None:
    """add_listener() on a built policy subscribes a metrics hook without rebuilding it."""
    policy, trigger = make()
    seen: list[PolicyEvent] = []
    policy.add_listener(seen.append)
    trigger()
    assert any(isinstance(e, kind) for e in seen)


@pytest.mark.parametrize(("make", "kind"), POLICIES, ids=IDS)
def test_removed_listener_hears_nothing_more(
    make: Callable[[], tuple[Any, Callable[[], None]]], kind: type[PolicyEvent]
) -> None:
    """remove_listener() unsubscribes; removing a stranger is ignored."""
    policy, trigger = make()
    seen: list[PolicyEvent] = []
    policy.add_listener(seen.append)
    policy.remove_listener(seen.append)
    policy.remove_listener(print)
    trigger()
    assert seen == []


def test_emitter_is_falsy_without_listeners() -> None:
    """Hot paths ask ``if self._events:``; an empty emitter must say no."""
    emitter = Emitter()
    assert not emitter
    emitter.add(print)
    assert emitter


def test_failing_listener_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken listener does not stop the next one, and its error is logged."""
    seen: list[PolicyEvent] = []

    def bad(event: PolicyEvent) -> None:
        raise RuntimeError("listener bug")

    emitter = Emitter([bad, seen.append])
    event = StateChanged(kind="breaker", name="b", at=1.0, old="closed", new="open")
    with caplog.at_level(logging.ERROR, logger="interlink.events"):
        emitter.emit(event)
    assert seen == [event]
    assert "failed on StateChanged" in caplog.text


def test_listener_removing_itself_while_emitting_is_safe() -> None:
    """Emitting iterates over a snapshot, so a listener may unsubscribe itself."""
    emitter = Emitter()
    calls: list[str] = []

    def once(event: PolicyEvent) -> None:
        calls.append("once")
        emitter.remove(once)

    emitter.add(once)
    emitter.add(lambda e: calls.append("always"))
    for _ in range(2):
        emitter.emit(PolicyEvent(kind="k", name="n", at=0.0))
    assert calls == ["once", "always", "always"]


def test_events_are_frozen() -> None:
    """Listeners share one event object: none of them can change it for the others."""
    event = StateChanged(kind="breaker", name="b", at=1.0, old="closed", new="open")
    with pytest.raises(AttributeError):
        event.new = "closed"  # type: ignore[misc]
