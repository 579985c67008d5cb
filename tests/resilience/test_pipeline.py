"""Pipelines compose policies in one order, sync and async, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from interlink.errors import BudgetExhausted, BulkheadFull, CircuitOpenError, DeadlineExceeded
from interlink.resilience.breaker import CircuitBreaker, State
from interlink.resilience.budget import RetryBudget
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.deadline import deadline, remaining
from interlink.resilience.fallback import Fallback
from interlink.resilience.hedge import Hedge
from interlink.resilience.pipeline import ORDER, Pipeline
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout
from interlink.testing import FakeClock


class Boom(Exception):
    """A downstream failure."""


class Flaky:
    """Fails ``failures`` times, then answers; counts its calls."""

    def __init__(self, failures: int, answer: str = "ok") -> None:
        self.failures = failures
        self.calls = 0
        self.answer = answer

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise Boom(f"failure {self.calls}")
        return self.answer

    async def acall(self) -> str:
        return self()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


def test_order_is_documented_and_positional_args_are_sorted(clock: FakeClock) -> None:
    """Policies given in any order run in ORDER; describe() lists them outermost first."""
    breaker = CircuitBreaker("b", clock=clock)
    retry = Retry(2, clock=clock)
    fallback = Fallback(value="cached")
    timeout = Timeout(1.0, clock=clock)
    bulkhead = Bulkhead(4)
    p = Pipeline(bulkhead, breaker, timeout, fallback, retry)
    assert [d["policy"] for d in p.describe()] == [
        "fallback",
        "timeout",
        "retry",
        "breaker",
        "bulkhead",
    ]
    assert ORDER == ("fallback", "timeout", "retry", "hedge", "breaker", "rate_limiter", "bulkhead")
    assert p.policies == (fallback, timeout, retry, breaker, bulkhead)


def test_two_of_a_kind_is_refused() -> None:
    """A pipeline takes one policy of each kind, and only policies."""
    with pytest.raises(ValueError, match="a pipeline takes one breaker"):
        Pipeline(CircuitBreaker("a"), CircuitBreaker("b"))
    with pytest.raises(TypeError, match="not an interlink policy: 42"):
        Pipeline(42)
    with pytest.raises(TypeError, match="'retry' must be a Retry"):
        Pipeline(retry=CircuitBreaker("x"))  # type: ignore[arg-type]


def test_retry_then_success(clock: FakeClock) -> None:
    """Two failures are retried with backoff and the third attempt answers."""
    flaky = Flaky(2)
    p = Pipeline(retry=Retry(3, jitter="none", backoff=0.1, clock=clock))
    assert p.call(flaky) == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.2]


def test_breaker_counts_each_attempt_and_rejects(clock: FakeClock) -> None:
    """Each retry attempt is one breaker outcome; once open, the fallback answers."""
    breaker = CircuitBreaker("b", minimum_calls=4, clock=clock)
    flaky = Flaky(100)
    p = Pipeline(
        fallback=Fallback(value="cached"),
        retry=Retry(3, jitter="none", backoff=0.01, clock=clock),
        breaker=breaker,
    )
    assert p.call(flaky) == "cached"
    assert flaky.calls == 4
    assert breaker.state is State.OPEN
    assert p.call(flaky) == "cached"
    assert flaky.calls == 4  # rejected by the breaker, not retried into it


def test_fallback_serves_last_good_answer(clock: FakeClock) -> None:
    """With cache_last_success the fallback answers with the last success."""
    answers = iter(["menu-v1", "menu-v2"])

    def menu() -> str:
        try:
            return next(answers)
        except StopIteration:
            raise Boom("menu down") from None

    p = Pipeline(fallback=Fallback(cache_last_success=True), retry=Retry(0, clock=clock))
    assert p.call(menu) == "menu-v1"
    assert p.call(menu) == "menu-v2"
    assert p.call(menu) == "menu-v2"


def test_without_fallback_errors_propagate(clock: FakeClock) -> None:
    """No fallback: the last error reaches the caller unchanged."""
    p = Pipeline(retry=Retry(1, clock=clock, jitter="none"))
    with pytest.raises(Boom, match="failure 2"):
        p.call(Flaky(5))


def test_timeout_installs_a_deadline_that_only_shrinks(clock: FakeClock) -> None:
    """Inside the call remaining() is the timeout, or the caller's sooner deadline."""
    p = Pipeline(timeout=Timeout(2.0, clock=clock))
    assert p.call(remaining) == 2.0
    with deadline(0.5, clock=clock):
        assert p.call(remaining) == 0.5
    with deadline(10.0, clock=clock):
        assert p.call(remaining) == 2.0
    assert remaining() is None


def test_expired_deadline_refuses_before_calling(clock: FakeClock) -> None:
    """A deadline already spent fails with DeadlineExceeded without calling."""
    flaky = Flaky(0)
    p = Pipeline(timeout=Timeout(2.0, clock=clock))
    with deadline(1.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded):
            p.call(flaky)
    assert flaky.calls == 0


def test_deadline_stops_retries_early(clock: FakeClock) -> None:
    """Retries stop when the next backoff would outlive the timeout."""
    flaky = Flaky(100)
    p = Pipeline(
        timeout=Timeout(1.0, clock=clock),
        retry=Retry(10, backoff=0.3, multiplier=2.0, jitter="none", clock=clock),
    )
    with pytest.raises(Boom):
        p.call(flaky)
    assert clock.sleeps == [0.3, 0.6]  # 0.3 + 0.6 = 0.9; the next 1.2 s would pass 1.0 s
    assert flaky.calls == 3


def test_budget_caps_retries(clock: FakeClock) -> None:
    """An empty budget stops retrying with BudgetExhausted chained to the last error."""
    budget = RetryBudget(ratio=0.0, min_per_second=0.1, ttl=10.0, clock=clock)
    p = Pipeline(retry=Retry(5, budget=budget, clock=clock, jitter="none"))
    with pytest.raises(BudgetExhausted) as info:
        p.call(Flaky(100))
    assert isinstance(info.value.__cause__, Boom)


def test_bulkhead_rejection_is_not_a_breaker_failure(clock: FakeClock) -> None:
    """A full bulkhead rejects, and the breaker does not count it against the downstream."""
    breaker = CircuitBreaker("b", minimum_calls=1, clock=clock)
    bulkhead = Bulkhead(1)
    p = Pipeline(breaker=breaker, bulkhead=bulkhead)
    inner: list[BaseException] = []

    def reenter() -> str:
        try:
            p.call(lambda: "never")
        except BulkheadFull as exc:
            inner.append(exc)
        return "outer"

    assert p.call(reenter) == "outer"
    assert isinstance(inner[0], BulkheadFull)
    assert breaker.state is State.CLOSED
    assert breaker.metrics.failures_total == 0
    assert bulkhead.running == 0


def test_rate_limiter_rejection_releases_half_open_trial(clock: FakeClock) -> None:
    """In HALF_OPEN an inner rejection hands the trial permit back."""
    breaker = CircuitBreaker("b", minimum_calls=1, clock=clock)
    limiter = RateLimiter(1.0, 1, clock=clock)
    p = Pipeline(breaker=breaker, rate_limiter=limiter)
    with pytest.raises(Boom):
        p.call(Flaky(1))
    clock.advance(60)
    assert breaker.state is State.HALF_OPEN
    limiter.try_acquire()
    with pytest.raises(Exception, match="out of tokens"):
        p.call(Flaky(0))
    clock.advance(1.0)
    assert p.call(Flaky(0)) == "ok"
    assert breaker.state is State.CLOSED


def test_decorator_sync_and_async(clock: FakeClock) -> None:
    """@pipeline works on def and async def and keeps the metadata."""
    p = Pipeline(retry=Retry(2, clock=clock, jitter="none"), breaker=CircuitBreaker("d"))
    flaky = Flaky(1)

    @p
    def get() -> str:
        """Fetch."""
        return flaky()

    @p
    async def aget() -> str:
        return await flaky.acall()

    assert get() == "ok"
    assert get.__doc__ == "Fetch."
    assert asyncio.run(aget()) == "ok"


def test_async_retry_breaker_fallback(clock: FakeClock) -> None:
    """acall retries, trips the breaker and falls back like call does."""
    breaker = CircuitBreaker("a", minimum_calls=3, clock=clock)
    flaky = Flaky(100)
    p = Pipeline(
        fallback=Fallback(value="cached"),
        retry=Retry(2, clock=clock, jitter="none"),
        breaker=breaker,
        bulkhead=Bulkhead(2),
    )
    assert asyncio.run(p.acall(flaky.acall)) == "cached"
    assert flaky.calls == 3
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        asyncio.run(Pipeline(breaker=breaker).acall(flaky.acall))


@pytest.mark.parametrize(
    "policies",
    [
        (),
        (Timeout(5.0),),
        (Fallback(value="cached"), Timeout(5.0), Retry(1)),
        (Hedge(0.01), Retry(1)),
    ],
    ids=["none", "timeout", "fallback", "hedge"],
)
def test_acall_hands_back_a_coroutine(policies: tuple[object, ...]) -> None:
    """acall returns a coroutine whatever the outermost policy, ready for create_task."""

    async def answer(x: int) -> int:
        return x + 1

    async def main() -> int:
        pending = Pipeline(*policies).acall(answer, 1)
        assert asyncio.iscoroutine(pending)
        return await asyncio.create_task(pending)

    assert asyncio.run(main()) == 2


def test_async_timeout_cancels_a_hung_call() -> None:
    """A call that hangs past the timeout is cancelled and DeadlineExceeded raised."""
    cancelled = False

    async def hang() -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled = True
            raise

    p = Pipeline(timeout=Timeout(0.05))
    with pytest.raises(DeadlineExceeded):
        asyncio.run(p.acall(hang))
    assert cancelled


def test_async_hedge_in_pipeline() -> None:
    """With a hedge, a slow first attempt is beaten by the hedged one."""
    calls = 0

    async def first_slow() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)
            return "slow"
        return "fast"

    p = Pipeline(hedge=Hedge(0.01), breaker=CircuitBreaker("h"))
    assert asyncio.run(p.acall(first_slow)) == "fast"
    with pytest.raises(TypeError, match="hedging needs acall"):
        p.call(lambda: None)


def test_hung_call_cut_by_timeout_counts_as_breaker_failure() -> None:
    """A call the timeout cancels is a failure for the breaker (a hang is not a cancellation)."""
    breaker = CircuitBreaker("hang", minimum_calls=2)
    p = Pipeline(timeout=Timeout(0.02), breaker=breaker)

    async def hang() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(DeadlineExceeded):
                await p.acall(hang)

    asyncio.run(main())
    assert breaker.state is State.OPEN
    assert breaker.metrics.failures_total == 2


def test_caller_cancellation_is_not_a_breaker_failure() -> None:
    """A caller that goes away (cancelled, no deadline passed) records nothing."""
    breaker = CircuitBreaker("gone", minimum_calls=1)
    p = Pipeline(timeout=Timeout(5.0), breaker=breaker)

    async def main() -> None:
        task = asyncio.create_task(p.acall(asyncio.sleep, 10))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert breaker.state is State.CLOSED
    assert breaker.metrics.failures_total == 0


def test_watchdog_timeout_does_not_swallow_outer_cancellation() -> None:
    """Cancelling a task inside a pipeline timeout propagates CancelledError, not a timeout."""
    p = Pipeline(timeout=Timeout(0.05))

    async def main() -> str:
        task = asyncio.create_task(p.acall(asyncio.sleep, 10))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(main()) == "cancelled"


def test_sync_thread_timeout_stops_waiting_in_a_pipeline() -> None:
    """A Timeout(strategy="thread") in a pipeline bounds what call() waits, retries included,
    and the fallback still answers in the caller's thread."""
    import time

    def hang() -> str:
        time.sleep(0.3)
        return "late"

    timeout = Timeout(0.05, strategy="thread")
    p = Pipeline(Fallback(value="cached"), timeout, Retry(2))
    start = time.perf_counter()
    assert p.call(hang) == "cached"
    assert time.perf_counter() - start < 0.25
    with pytest.raises(DeadlineExceeded):
        Pipeline(timeout).call(hang)
    assert Pipeline(timeout, Retry(1)).call(lambda: remaining() is not None) is True
    timeout.close()
