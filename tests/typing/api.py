"""Type-checked uses of the resilience API; mypy reads this file (``make types``), nothing runs it.

Each wrong call carries a ``type: ignore`` with its error code: mypy's ``warn_unused_ignores``
(on under ``strict``) fails the check should the call ever type-check, so the ParamSpec typing of
``call``/``acall`` and the decorators cannot quietly decay to ``Callable[..., Any]``.
"""

from __future__ import annotations

from interlink import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
)


def price(item: str, quantity: int = 1) -> float:
    return 2.5 * quantity


async def aprice(item: str, quantity: int = 1) -> float:
    return 2.5 * quantity


pipeline = Pipeline(Timeout(1.0), Retry(2), CircuitBreaker("menu"), Bulkhead(4))
breaker = CircuitBreaker("menu")
retry = Retry(3, backoff=0.05, max_backoff=1.0)
timeout = Timeout(0.5)
bulkhead = Bulkhead(8)
limiter = RateLimiter(10.0)
fallback = Fallback(value=0.0)


def sync_calls() -> list[float]:
    return [
        pipeline.call(price, "soup"),
        pipeline.call(price, "soup", quantity=2),
        breaker.call(price, "soup", 3),
        retry.call(price, "soup"),
        timeout.call(price, "soup"),
        bulkhead.call(price, "soup"),
        limiter.call(price, "soup"),
    ]


async def async_calls() -> list[float]:
    return [
        await pipeline.acall(aprice, "soup"),
        await breaker.acall(aprice, "soup", quantity=2),
        await retry.acall(aprice, "soup"),
        await timeout.acall(aprice, "soup"),
        await bulkhead.acall(aprice, "soup"),
    ]


def wrong_arguments_are_rejected() -> None:
    pipeline.call(price, 1)  # type: ignore[arg-type]
    pipeline.call(price, "soup", "two")  # type: ignore[arg-type]
    pipeline.call(price, "soup", colour="red")  # type: ignore[call-arg]
    breaker.call(price, 1)  # type: ignore[arg-type]
    retry.call(price)  # type: ignore[call-arg]
    timeout.call(price, quantity="2")  # type: ignore[call-arg,arg-type]


async def wrong_async_arguments_are_rejected() -> None:
    await pipeline.acall(aprice, 1)  # type: ignore[arg-type]
    await breaker.acall(aprice, "soup", "two")  # type: ignore[arg-type]
    await pipeline.acall(price, "soup")  # type: ignore[arg-type]


def results_keep_their_type() -> None:
    total: float = pipeline.call(price, "soup")
    text: str = pipeline.call(price, "soup")  # type: ignore[assignment]
    guarded = breaker(price)
    retried = retry(price)
    piped = pipeline(price)
    total = guarded("soup") + retried("soup") + piped("soup")
    guarded(1)  # type: ignore[arg-type]
    retried("soup", "x")  # type: ignore[arg-type]
    piped(quantity=1)  # type: ignore[call-arg]
    print(total, text)
