"""Retry: schedule, retries, what is retried, deadline, budget, drivers and decorator."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.errors import BudgetExhausted, CircuitOpenError, RateLimited, RejectedError
from interlink.resilience.budget import RetryBudget
from interlink.resilience.deadline import deadline
from interlink.resilience.events import PolicyEvent, RetryGaveUp, RetryScheduled
from interlink.resilience.retry import Retry
from interlink.testing.clock import FakeClock


class Boom(Exception):
    """The error the flaky functions raise."""


class Flaky:
    """Fails ``failures`` times (with a fresh error each time), then returns ``"ok"``."""

    def __init__(self, failures: int = 1_000_000, error: type[Exception] = Boom) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.raised: list[Exception] = []

    def __call__(self, *args: object, **kwargs: object) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return "ok"

    async def acall(self) -> str:
        await asyncio.sleep(0)
        return self()


def retry(clock: FakeClock, **kwargs: Any) -> Retry:
    """A Retry on ``clock`` with exact delays unless the test says otherwise."""
    kwargs.setdefault("jitter", "none")
    return Retry(clock=clock, **kwargs)


# -- schedule -------------------------------------------------------------------------------


def test_defaults_are_pinned() -> None:
    """The documented defaults: 3 retries, 0.1 s doubling to 10 s, full jitter."""
    params = inspect.signature(Retry).parameters
    defaults = {
        name: p.default
        for name, p in params.items()
        if name in {"retries", "backoff", "multiplier", "max_backoff", "jitter", "retry_on", "name"}
    }
    assert defaults == {
        "retries": 3,
        "backoff": 0.1,
        "multiplier": 2.0,
        "max_backoff": 10.0,
        "jitter": "full",
        "retry_on": (Exception,),
        "name": "retry",
    }


def test_first_retry_waits_backoff_and_then_doubles() -> None:
    """With jitter "none" the waits are backoff, backoff*m, backoff*m**2."""
    clock = FakeClock()
    flaky = Flaky()
    with pytest.raises(Boom):
        retry(clock, retries=3).call(flaky)
    assert clock.sleeps == [0.1, 0.2, 0.4]


def test_delays_are_capped_at_max_backoff() -> None:
    """The exponential growth stops at max_backoff."""
    clock = FakeClock()
    with pytest.raises(Boom):
        retry(clock, retries=5, backoff=1.0, multiplier=3.0, max_backoff=5.0).call(Flaky())
    assert clock.sleeps == [1.0, 3.0, 5.0, 5.0, 5.0]


_settings = st.fixed_dictionaries(
    {
        "attempt": st.integers(0, 5000),
        "backoff": st.floats(0.0, 5.0),
        "multiplier": st.floats(1.0, 10.0),
        "spread": st.floats(0.0, 100.0),
        "seed": st.integers(0, 2**32),
        "prev": st.floats(0.0, 200.0),
    }
)


def _computed(s: dict[str, Any]) -> tuple[float, float]:
    max_backoff = s["backoff"] + s["spread"]
    try:
        raw = s["backoff"] * s["multiplier"] ** s["attempt"]
    except OverflowError:
        raw = math.inf
    return min(raw, max_backoff), max_backoff


def _delay(jitter: str, s: dict[str, Any]) -> float:
    r = Retry(
        retries=10_000,
        backoff=s["backoff"],
        multiplier=s["multiplier"],
        max_backoff=s["backoff"] + s["spread"],
        jitter=jitter,
        rng=Random(s["seed"]),
        clock=FakeClock(),
    )
    return r.next_delay(s["attempt"], Boom(), s["prev"])


@given(_settings)
def test_no_jitter_is_exactly_the_formula(s: dict[str, Any]) -> None:
    """ "none": min(backoff * multiplier**attempt, max_backoff), even where the power overflows."""
    assert _delay("none", s) == _computed(s)[0]


@given(_settings)
def test_full_jitter_is_within_zero_and_the_computed_delay(s: dict[str, Any]) -> None:
    """ "full": uniform in [0, computed]."""
    assert 0.0 <= _delay("full", s) <= _computed(s)[0]


@given(_settings)
def test_equal_jitter_keeps_at_least_half(s: dict[str, Any]) -> None:
    """ "equal": computed/2 + uniform [0, computed/2]."""
    computed = _computed(s)[0]
    assert computed / 2 <= _delay("equal", s) <= computed


@given(_settings)
def test_decorrelated_jitter_is_between_base_and_three_times_previous(s: dict[str, Any]) -> None:
    """ "decorrelated": min(max_backoff, uniform(backoff, 3 * prev)), prev at least backoff."""
    delay = _delay("decorrelated", s)
    max_backoff = _computed(s)[1]
    assert min(s["backoff"], max_backoff) <= delay <= max_backoff
    assert delay <= 3 * max(s["prev"], s["backoff"]) + 1e-9


def test_jitter_draws_from_the_injected_rng() -> None:
    """The same seed gives the same delays."""

    def delays(seed: int) -> list[float]:
        clock = FakeClock()
        with pytest.raises(Boom):
            Retry(3, jitter="full", rng=Random(seed), clock=clock).call(Flaky())
        return clock.sleeps

    assert delays(7) == delays(7)
    assert delays(7) != delays(8)


def test_decorrelated_loop_feeds_back_the_previous_delay() -> None:
    """In a call loop, each decorrelated delay is at most 3x the one before."""
    clock = FakeClock()
    r = Retry(8, backoff=0.01, max_backoff=100.0, jitter="decorrelated", rng=Random(1), clock=clock)
    with pytest.raises(Boom):
        r.call(Flaky())
    prev = 0.01
    for d in clock.sleeps:
        assert 0.01 <= d <= 3 * prev
        prev = d


# -- retries and what is retried -----------------------------------------------------------


def test_three_retries_mean_four_calls_and_the_last_error() -> None:
    """retries=3 calls at most 4 times and re-raises the last error itself."""
    flaky = Flaky()
    with pytest.raises(Boom) as info:
        retry(FakeClock(), retries=3).call(flaky)
    assert flaky.calls == 4
    assert info.value is flaky.raised[-1]


def test_zero_retries_call_once() -> None:
    """retries=0 never retries."""
    flaky = Flaky()
    clock = FakeClock()
    with pytest.raises(Boom):
        retry(clock, retries=0).call(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_success_after_failures_returns_the_result() -> None:
    """A call that recovers returns its value, with arguments passed every time."""
    seen: list[tuple[object, ...]] = []
    flaky = Flaky(failures=2)

    def fn(a: int, *, b: int) -> str:
        seen.append((a, b))
        return flaky()

    assert retry(FakeClock(), retries=3).call(fn, 1, b=2) == "ok"
    assert seen == [(1, 2)] * 3


def test_later_errors_do_not_chain_onto_earlier_ones() -> None:
    """The error re-raised after retries has no implicit __context__ from previous attempts."""
    with pytest.raises(Boom) as info:
        retry(FakeClock(), retries=2).call(Flaky())
    assert info.value.__context__ is None


def test_errors_outside_retry_on_are_raised_at_once() -> None:
    """An error retry_on does not name is not retried."""
    flaky = Flaky(error=KeyError)
    clock = FakeClock()
    with pytest.raises(KeyError):
        retry(clock, retry_on=(Boom, ValueError)).call(flaky)
    assert flaky.calls == 1
    assert clock.sleeps == []


def test_a_single_exception_type_is_accepted() -> None:
    """retry_on=SomeError works like (SomeError,)."""
    flaky = Flaky(failures=1)
    assert retry(FakeClock(), retry_on=Boom).call(flaky) == "ok"


def test_predicate_decides_what_is_retried() -> None:
    """A predicate retry_on sees the error and decides."""

    def transient(exc: BaseException) -> bool:
        return "1" in str(exc)

    flaky = Flaky()
    with pytest.raises(Boom, match="failure 2"):
        retry(FakeClock(), retry_on=transient).call(flaky)
    assert flaky.calls == 2


def test_circuit_open_is_not_retried_by_default() -> None:
    """Retrying into an open breaker is pointless, so CircuitOpenError is raised at once."""
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        raise CircuitOpenError("db", 5.0)

    with pytest.raises(CircuitOpenError):
        retry(FakeClock()).call(fn)
    assert calls == 1


@pytest.mark.parametrize("named", [CircuitOpenError, RejectedError])
def test_circuit_open_is_retried_when_named(named: type[Exception]) -> None:
    """Naming CircuitOpenError (or a base below Exception) in retry_on opts in."""
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        raise CircuitOpenError("db", None)

    with pytest.raises(CircuitOpenError):
        retry(FakeClock(), retries=2, retry_on=(named,)).call(fn)
    assert calls == 3


def test_keyboard_interrupt_is_never_retried() -> None:
    """BaseExceptions pass straight through, even with retry_on=(BaseException,)."""
    calls = 0

    def fn() -> None:
        nonlocal calls
        calls += 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry(FakeClock(), retry_on=(BaseException,)).call(fn)
    assert calls == 1


def test_next_delay_never_retries_cancellation() -> None:
    """next_delay re-raises CancelledError even for a predicate that accepts everything."""
    r = retry(FakeClock(), retry_on=lambda exc: True)
    exc = asyncio.CancelledError()
    with pytest.raises(asyncio.CancelledError) as info:
        r.next_delay(0, exc, 0.0)
    assert info.value is exc


def test_cancelled_error_is_never_retried_by_acall() -> None:
    """A cancelled attempt ends the call at once."""
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(retry(FakeClock()).acall(fn))
    assert calls == 1


# -- retry-after, deadline, budget ----------------------------------------------------------


def test_retry_after_hint_replaces_the_schedule() -> None:
    """An error's retry_after is the delay used, even above max_backoff."""
    clock = FakeClock()
    calls = 0

    def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimited("api", 1.0, 1, retry_after=12.5)
        return "ok"

    assert retry(clock, max_backoff=1.0).call(fn) == "ok"
    assert clock.sleeps == [12.5]


def test_retry_after_none_falls_back_to_the_schedule() -> None:
    """retry_after=None (no hint given) uses the backoff schedule."""

    class Hinted(Exception):
        retry_after = None

    clock = FakeClock()
    with pytest.raises(Hinted):
        retry(clock, retries=2).call(Flaky(error=Hinted))
    assert clock.sleeps == [0.1, 0.2]


def test_deadline_stops_retries_with_the_last_error() -> None:
    """When the next wait would reach the deadline the last error is raised, not slept on."""
    clock = FakeClock()
    flaky = Flaky()
    r = retry(clock, retries=10, backoff=0.4)
    with deadline(1.0, clock=clock), pytest.raises(Boom) as info:
        r.call(flaky)
    # waited 0.4 (0.6 left); the next wait of 0.8 would pass the deadline
    assert clock.sleeps == [0.4]
    assert flaky.calls == 2
    assert info.value is flaky.raised[-1]


def test_deadline_stops_async_retries_early() -> None:
    """acall gives up like call does: the last error, before a wait that would pass the deadline."""
    clock = FakeClock()
    flaky = Flaky()
    r = retry(clock, retries=10, backoff=0.4)

    async def main() -> None:
        async with deadline(1.0, clock=clock):
            await r.acall(flaky.acall)

    with pytest.raises(Boom) as info:
        asyncio.run(main())
    assert clock.sleeps == [0.4]
    assert flaky.calls == 2
    assert info.value is flaky.raised[-1]


def test_nested_deadline_shortens_the_retries_of_an_outer_one() -> None:
    """An inner, stricter deadline stops the retries sooner; leaving it restores the outer one."""
    clock = FakeClock()
    r = retry(clock, retries=10, backoff=0.1)
    with deadline(10.0, clock=clock):
        with deadline(0.35, clock=clock), pytest.raises(Boom):
            r.call(Flaky())
        assert clock.sleeps == [0.1, 0.2]  # the next 0.4 s would pass 0.35 s
        clock.sleeps.clear()
        with pytest.raises(Boom):
            retry(clock, retries=3, backoff=0.1).call(Flaky())
        assert clock.sleeps == [0.1, 0.2, 0.4]  # the outer 10 s leaves room for every retry


def test_delay_equal_to_the_time_left_gives_up() -> None:
    """A wait that would end exactly at the deadline is not taken."""
    clock = FakeClock()
    with deadline(0.1, clock=clock), pytest.raises(Boom):
        retry(clock).call(Flaky())
    assert clock.sleeps == []


def test_retry_after_hint_is_bounded_by_the_deadline() -> None:
    """A server asking for a wait longer than the time left ends the call."""
    clock = FakeClock()

    def fn() -> None:
        raise RateLimited("api", 1.0, 1, retry_after=3.0)

    with deadline(2.0, clock=clock), pytest.raises(RateLimited):
        retry(clock).call(fn)
    assert clock.sleeps == []


def test_budget_refusal_raises_budget_exhausted_from_the_last_error() -> None:
    """When the budget says no, BudgetExhausted is raised with the last error as its cause."""
    budget = RetryBudget(ratio=0, min_per_second=0.2, ttl=10, clock=FakeClock())
    flaky = Flaky()
    with pytest.raises(BudgetExhausted) as info:
        retry(FakeClock(), retries=5, budget=budget).call(flaky)
    assert flaky.calls == 3  # the budget held 2 retries
    assert info.value.__cause__ is flaky.raised[-1]
    assert info.value.name == "retry-budget"
    assert budget.snapshot().refused == 1


def test_each_call_deposits_once() -> None:
    """call() and begin() deposit one first attempt; retries do not deposit."""
    budget = RetryBudget(clock=FakeClock())
    r = retry(FakeClock(), retries=2, budget=budget)
    r.call(Flaky(failures=2))
    r.begin()
    assert budget.snapshot().deposits == 2
    assert budget.snapshot().retries == 2


def test_deadline_is_checked_before_spending_budget() -> None:
    """Giving up for the deadline does not take a retry from the budget."""
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    with deadline(0.05, clock=clock), pytest.raises(Boom):
        retry(clock, budget=budget).call(Flaky())
    assert budget.snapshot().retries == 0


def test_retry_storm_is_capped_by_the_shared_budget() -> None:
    """1,000 always-failing calls sharing one budget make at most 20 % + floor extra attempts."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)
    # 1,000 calls over 5 s (200/s), all inside one ttl; waits are not simulated so the
    # window cannot roll over and refill the budget.
    r = Retry(3, budget=budget, clock=clock, sleep=lambda s: None, rng=Random(0))
    flaky = Flaky()
    exhausted = 0
    for _ in range(1000):
        clock.advance(0.005)
        try:
            r.call(flaky)
        except BudgetExhausted:
            exhausted += 1
        except Boom:
            pass
    assert flaky.calls <= 1000 * 1.2 + 10 * 10
    assert flaky.calls >= 1000 * 1.2 + 10 * 10 - 2  # the budget is spent, not hoarded
    assert exhausted > 0


def test_retry_storm_bound_holds_for_concurrent_tasks() -> None:
    """1,000 concurrent always-failing acalls sharing one budget stay under the same bound."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)

    async def yield_only(seconds: float) -> None:
        await asyncio.sleep(0)  # interleave the tasks; the clock stays inside one ttl

    r = Retry(3, budget=budget, clock=clock, asleep=yield_only, rng=Random(0))
    flaky = Flaky()

    async def main() -> list[BaseException | str]:
        return await asyncio.gather(
            *(r.acall(flaky.acall) for _ in range(1000)), return_exceptions=True
        )

    outcomes = asyncio.run(main())
    assert all(isinstance(o, Boom | BudgetExhausted) for o in outcomes)
    assert 1000 < flaky.calls <= 1000 * 1.2 + 10 * 10


def test_retry_storm_bound_holds_for_threads() -> None:
    """8 threads x 125 always-failing calls sharing one budget stay under the same bound."""
    import threading

    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)
    r = Retry(3, budget=budget, clock=clock, sleep=lambda s: None, rng=Random(0))
    calls = [0] * 8

    def work(i: int) -> None:
        def attempt() -> None:
            calls[i] += 1
            raise Boom

        for _ in range(125):
            with contextlib.suppress(Boom, BudgetExhausted):
                r.call(attempt)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1000 < sum(calls) <= 1000 * 1.2 + 10 * 10


@settings(max_examples=40, deadline=None)
@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    floor=st.sampled_from([0.0, 1.0, 10.0]),
    ttl=st.sampled_from([1.0, 10.0, 60.0]),
    requests=st.integers(1, 400),
    retries=st.integers(0, 5),
)
def test_retry_storm_bound_for_any_budget(
    ratio: float, floor: float, ttl: float, requests: int, retries: int
) -> None:
    """Within one ttl, calls <= requests x (1 + ratio) + min_per_second x ttl, whatever
    the settings (and never more than requests x (1 + retries))."""
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, ttl=ttl, clock=clock)
    r = Retry(retries, budget=budget, clock=clock, sleep=lambda s: None, rng=Random(0))
    flaky = Flaky()
    for _ in range(requests):
        with contextlib.suppress(Boom, BudgetExhausted):
            r.call(flaky)
    assert flaky.calls <= requests * (1 + ratio) + floor * ttl + 1e-9
    assert flaky.calls <= requests * (1 + retries)


# -- drivers --------------------------------------------------------------------------------


def test_call_prefers_the_explicit_sleep() -> None:
    """sleep= wins over the clock's own sleep."""
    clock = FakeClock()
    slept: list[float] = []
    with pytest.raises(Boom):
        retry(clock, retries=2, sleep=slept.append).call(Flaky())
    assert slept == [0.1, 0.2]
    assert clock.sleeps == []


def test_acall_retries_and_sleeps_with_the_async_sleep() -> None:
    """acall awaits the clock's asleep between attempts and returns the result."""
    clock = FakeClock()
    flaky = Flaky(failures=2)
    assert asyncio.run(retry(clock, retries=3).acall(flaky.acall)) == "ok"
    assert flaky.calls == 3
    assert clock.sleeps == [0.1, 0.2]


def test_acall_uses_an_explicit_asleep() -> None:
    """asleep= is awaited instead of the clock's."""
    clock = FakeClock()
    slept: list[float] = []

    async def asleep(seconds: float) -> None:
        slept.append(seconds)

    with pytest.raises(Boom):
        asyncio.run(retry(clock, retries=1, asleep=asleep).acall(Flaky().acall))
    assert slept == [0.1]
    assert clock.sleeps == []


def test_acall_with_budget_raises_budget_exhausted() -> None:
    """The async loop shares the budget decision with the sync one."""
    budget = RetryBudget(ratio=0, min_per_second=0, clock=FakeClock())
    flaky = Flaky()
    with pytest.raises(BudgetExhausted) as info:
        asyncio.run(retry(FakeClock(), budget=budget).acall(flaky.acall))
    assert info.value.__cause__ is flaky.raised[-1]
    assert budget.snapshot().deposits == 1


def test_decorator_wraps_a_function() -> None:
    """@retry keeps name and docstring and retries the call."""
    flaky = Flaky(failures=1)
    r = retry(FakeClock())

    @r
    def fetch(x: int) -> str:
        """Fetch x."""
        return flaky() + str(x)

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch x."
    assert fetch(1) == "ok1"
    assert flaky.calls == 2


def test_decorator_wraps_a_coroutine_function() -> None:
    """@retry on async def returns a coroutine function that retries."""
    clock = FakeClock()
    flaky = Flaky(failures=2)

    @retry(clock, budget=RetryBudget(clock=clock))
    async def fetch() -> str:
        """Fetch async."""
        return await flaky.acall()

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch async."
    assert asyncio.run(fetch()) == "ok"
    assert clock.sleeps == [0.1, 0.2]


def test_decorator_works_on_methods() -> None:
    """Decorated methods receive self, sync and async."""
    clock = FakeClock()
    r = retry(clock, retries=1)

    class Client:
        def __init__(self) -> None:
            self.flaky = Flaky(failures=1)

        @r
        def get(self, path: str) -> str:
            return self.flaky() + path

        @r
        async def aget(self, path: str) -> str:
            return await self.flaky.acall() + path

    assert Client().get("/a") == "ok/a"
    assert asyncio.run(Client().aget("/b")) == "ok/b"


# -- events, describe, validation -----------------------------------------------------------


def test_events_report_each_retry_and_the_give_up() -> None:
    """Listeners get RetryScheduled per retry and one RetryGaveUp with the reason."""
    clock = FakeClock()
    seen: list[PolicyEvent] = []
    with pytest.raises(Boom):
        retry(clock, retries=2, name="orders", listeners=[seen.append]).call(Flaky())
    assert seen == [
        RetryScheduled(kind="retry", name="orders", at=0.0, attempt=1, delay=0.1, error="Boom"),
        RetryScheduled(kind="retry", name="orders", at=0.1, attempt=2, delay=0.2, error="Boom"),
        RetryGaveUp(
            kind="retry",
            name="orders",
            at=clock.now,
            attempts=3,
            reason="retries",
            error="Boom",
        ),
    ]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ({"retry_on": (KeyError,)}, "not_retryable"),
        ({"retries": 0}, "retries"),
        ({"budget": RetryBudget(ratio=0, min_per_second=0)}, "budget"),
    ],
)
def test_give_up_reasons(setup: dict[str, Any], reason: str) -> None:
    """RetryGaveUp names why the policy stopped."""
    seen: list[PolicyEvent] = []
    with pytest.raises(Exception):
        retry(FakeClock(), listeners=[seen.append], **setup).call(Flaky())
    assert [e.reason for e in seen if isinstance(e, RetryGaveUp)] == [reason]


def test_describe_lists_the_settings() -> None:
    """describe() is what Pipeline.describe() shows for this stage."""
    budget = RetryBudget(clock=FakeClock())
    assert Retry(2, backoff=0.5, jitter="equal", name="db", budget=budget).describe() == {
        "policy": "retry",
        "name": "db",
        "retries": 2,
        "backoff": 0.5,
        "multiplier": 2.0,
        "max_backoff": 10.0,
        "jitter": "equal",
        "budget": budget.describe(),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "'retries' must be an integer >= 0: -1"),
        ({"retries": 1.5}, "'retries' must be an integer >= 0: 1.5"),
        ({"backoff": -0.1}, "'backoff' must be a finite number >= 0: -0.1"),
        ({"multiplier": 0.5}, "'multiplier' must be a finite number >= 1: 0.5"),
        ({"multiplier": math.inf}, "'multiplier' must be a finite number >= 1: inf"),
        ({"backoff": 2.0, "max_backoff": 1.0}, "'max_backoff' must be >= backoff (2.0): 1.0"),
        ({"max_backoff": math.inf}, "'max_backoff' must be a finite number >= 0: inf"),
        (
            {"jitter": "gauss"},
            "'jitter' must be one of 'none', 'full', 'equal', 'decorrelated': 'gauss'",
        ),
        (
            {"retry_on": (KeyError, "nope")},
            "'retry_on' must be an exception type, a tuple of them, or a predicate: "
            "(<class 'KeyError'>, 'nope')",
        ),
        (
            {"retry_on": 3},
            "'retry_on' must be an exception type, a tuple of them, or a predicate: 3",
        ),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    """Bad settings raise ValueError naming the parameter and the value."""
    with pytest.raises(ValueError) as info:
        Retry(**kwargs)
    assert str(info.value) == message
