"""What the resilience claims time: the wrapped functions (``f``, ``af`` and their failing
twins), each peer library in its idiomatic decorator form, and interlink's own contenders that
need building (the Pipeline, a breaker tripped OPEN by real failures).

Its own module so the timing cases and the memory and concurrency rows build their contenders
the same way; ``resilience.py`` runs them.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Callable
from typing import Any

from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.retry import Retry

OPEN_FOR = 1e6  # seconds a tripped breaker stays OPEN: far longer than the run


def f() -> int:
    return 1


async def af() -> int:
    return 1


def boom() -> int:
    raise ValueError("down")


async def aboom() -> int:
    raise ValueError("down")


def _trip(call: Callable[[], Any]) -> None:
    """Fail through ``call`` until it starts rejecting (a natural OPEN, not a forced one)."""
    for _ in range(3):
        with contextlib.suppress(Exception):
            call()


async def _atrip(call: Callable[[], Any]) -> None:
    for _ in range(3):
        with contextlib.suppress(Exception):
            await call()


# ---------------------------------------------------------------------------------- contenders
# Each peer is configured as its README shows, with its default thresholds for the closed path
# and "open after one failure, stay open" for the rejection path.


def _pybreaker(fail_max: int = 5, reset: float = 60) -> Any:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset)


def _aiobreaker(fail_max: int = 5, reset: float = 60) -> Any:
    import aiobreaker

    return aiobreaker.CircuitBreaker(
        fail_max=fail_max, timeout_duration=datetime.timedelta(seconds=reset)
    )


def _circuitbreaker(fail_max: int = 5, reset: float = 60) -> Any:
    import circuitbreaker

    return circuitbreaker.CircuitBreaker(failure_threshold=fail_max, recovery_timeout=reset)


def _purgatory(fail_max: int = 5, reset: float = 60, *, is_async: bool = False) -> Any:
    import purgatory

    factory = (
        purgatory.AsyncCircuitBreakerFactory if is_async else purgatory.SyncCircuitBreakerFactory
    )
    return factory(default_threshold=fail_max, default_ttl=reset)


def sync_breakers(fn: Callable[[], Any], *, tripped: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(peer name, ``fn`` decorated by it); tripped: opened by one real failure first."""
    kw: dict[str, Any] = {"fail_max": 1, "reset": OPEN_FOR} if tripped else {}
    out = []
    b = _pybreaker(**kw)
    out.append(("pybreaker", b(fn), b(boom)))
    p = _purgatory(**kw)
    out.append(("purgatory", p("bench")(fn), p("bench")(boom)))
    a = _aiobreaker(**kw)
    out.append(("aiobreaker", a(fn), a(boom)))
    c = _circuitbreaker(**kw)
    out.append(("circuitbreaker", c(fn), c(boom)))
    if tripped:
        for _, _, fail in out:
            _trip(fail)
    return [(name, wrapped) for name, wrapped, _ in out]


async def async_breakers(*, tripped: bool) -> list[tuple[str, Callable[[], Any]]]:
    """The peers that decorate ``async def`` (pybreaker only does Tornado coroutines)."""
    kw: dict[str, Any] = {"fail_max": 1, "reset": OPEN_FOR} if tripped else {}
    out = []
    p = _purgatory(**kw, is_async=True)
    out.append(("purgatory", p("bench")(af), p("bench")(aboom)))
    a = _aiobreaker(**kw)
    out.append(("aiobreaker", a(af), a(aboom)))
    c = _circuitbreaker(**kw)
    out.append(("circuitbreaker", c(af), c(aboom)))
    if tripped:
        for _, _, fail in out:
            await _atrip(fail)
    return [(name, wrapped) for name, wrapped, _ in out]


def retriers(fn: Callable[..., Any]) -> list[tuple[str, Callable[..., Any]]]:
    """The retry peers, 4 attempts in all (interlink's Retry(3): 3 retries after the first)."""
    import backoff
    import stamina
    import tenacity

    return [
        ("tenacity", tenacity.retry(stop=tenacity.stop_after_attempt(4))(fn)),
        ("stamina", stamina.retry(on=Exception, attempts=4)(fn)),
        ("backoff", backoff.on_exception(backoff.expo, Exception, max_tries=4)(fn)),
    ]


def pipeline() -> Any | None:
    """interlink's Pipeline of timeout + retry + breaker + bulkhead, or None if not built yet."""
    try:
        from interlink.resilience.bulkhead import Bulkhead
        from interlink.resilience.pipeline import Pipeline
        from interlink.resilience.timeout import Timeout
    except ImportError as exc:
        print(f"note: pipeline rows skipped ({exc})")
        return None
    return Pipeline(
        timeout=Timeout(5.0),
        retry=Retry(3),
        breaker=CircuitBreaker("bench"),
        bulkhead=Bulkhead(100),
    )


def _tripped_interlink() -> CircuitBreaker:
    b = CircuitBreaker("bench", minimum_calls=1, cooldown=OPEN_FOR)
    _trip(functools.partial(b.call, boom))
    assert b.state.value == "open", b.state
    return b
