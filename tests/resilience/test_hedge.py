"""Hedge: extra attempts when the first is slow; first success wins, the rest are cancelled."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.resilience._latency import LatencyTracker
from interlink.resilience.budget import RetryBudget
from interlink.resilience.deadline import deadline
from interlink.resilience.events import HedgeLaunched, PolicyEvent
from interlink.resilience.hedge import (
    DEFAULT_DELAY,
    DEFAULT_MAX_HEDGES,
    DEFAULT_MIN_DELAY,
    DEFAULT_PERCENTILE,
    LATENCY_WINDOW,
    MIN_SAMPLES,
    REFRESH_EVERY,
    Hedge,
    HedgeOptions,
)
from interlink.testing import FakeClock

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main`` in a fresh loop and check that it left no task behind."""

    async def checked() -> T:
        try:
            return await main()
        finally:
            assert asyncio.all_tasks() == {asyncio.current_task()}

    return asyncio.run(checked())


async def spin(times: int = 20) -> None:
    """Let the loop run other tasks for a while (FakeClock sleeps take one step each)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def never_fires(seconds: float) -> None:
    """A hedge timer that never goes off (the hedge cancels it when the call ends)."""
    await asyncio.Event().wait()


class Downstream:
    """Attempts scripted one by one: "ok" answers, "fail" raises, "hang" waits for ``release``."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.started = 0
        self.cancelled: list[int] = []
        self.release = asyncio.Event()

    async def __call__(self, value: str = "v") -> str:
        n = self.started
        self.started += 1
        step = self.script[n] if n < len(self.script) else "hang"
        if step == "fail":
            raise ValueError(f"attempt {n}")
        if step == "hang":
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(n)
                raise
        return f"{value}-{n}"


class CountingBudget:
    """A test budget: ``tokens`` hedges allowed; counts deposits and withdrawal requests."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.deposits = 0
        self.requests = 0

    def deposit(self) -> None:
        self.deposits += 1

    def try_withdraw(self) -> bool:
        self.requests += 1
        if self.tokens <= 0:
            return False
        self.tokens -= 1
        return True


# --- configuration ---------------------------------------------------------------------------


def test_defaults_are_pinned() -> None:
    """The documented defaults do not drift."""
    assert (DEFAULT_DELAY, DEFAULT_MAX_HEDGES, DEFAULT_PERCENTILE, DEFAULT_MIN_DELAY) == (
        0.05,
        1,
        0.95,
        0.001,
    )
    assert (LATENCY_WINDOW, MIN_SAMPLES, REFRESH_EVERY) == (512, 20, 16)
    assert HedgeOptions() == Hedge().options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay": -0.1}, "'delay' must be a finite number >= 0: -0.1"),
        ({"delay": math.inf}, "'delay' must be a finite number >= 0: inf"),
        ({"max_hedges": 0}, "'max_hedges' must be an integer >= 1: 0"),
        ({"percentile": 0}, "'percentile' must be in (0, 1]: 0"),
        ({"percentile": 1.5}, "'percentile' must be in (0, 1]: 1.5"),
        ({"min_delay": -1}, "'min_delay' must be a finite number >= 0: -1"),
    ],
)
def test_bad_settings_name_parameter_and_value(kwargs: dict[str, Any], message: str) -> None:
    """Bad configuration fails at construction, naming the parameter and the value."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("]", r"\]")):
        Hedge(**kwargs)


def test_describe_reports_settings() -> None:
    """describe() lists every setting."""
    hedge = Hedge(0.2, max_hedges=2, budget=CountingBudget(1), adaptive=True, name="users")
    assert hedge.describe() == {
        "policy": "hedge",
        "name": "users",
        "delay": 0.2,
        "max_hedges": 2,
        "adaptive": True,
        "percentile": 0.95,
        "min_delay": 0.001,
        "budget": "CountingBudget",
    }


def test_sync_call_is_a_type_error() -> None:
    """call() explains that hedging needs async code."""
    with pytest.raises(TypeError, match=r"hedging needs async code: .* cancelled"):
        Hedge().call(len, "x")


def test_decorating_a_sync_function_is_a_type_error() -> None:
    """@hedge on a plain def fails at decoration time, not on the first call."""

    def blocking() -> int:
        return 1

    with pytest.raises(TypeError, match="hedging needs async code"):
        Hedge()(blocking)


def test_decorator_hedges_an_async_def() -> None:
    """@hedge keeps the function's name and passes arguments through."""
    clock = FakeClock()
    down = Downstream("hang", "ok")

    @Hedge(0.05, clock=clock)
    async def fetch(value: str) -> str:
        """Fetch it."""
        return await down(value)

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch it."
    assert run(lambda: fetch("x")) == "x-1"


def test_decorator_accepts_an_object_with_async_call() -> None:
    """An instance whose ``__call__`` is ``async def`` counts as async code."""
    hedged = Hedge(clock=FakeClock())(Downstream("ok"))
    assert run(lambda: hedged("d")) == "d-0"


def test_acall_takes_any_callable_returning_an_awaitable() -> None:
    """acall awaits whatever the callable returns, not only ``async def`` functions."""
    down = Downstream("ok")
    assert run(lambda: Hedge(clock=FakeClock()).acall(lambda: down("l"))) == "l-0"


# --- racing ----------------------------------------------------------------------------------


def test_fast_primary_wins_without_a_hedge() -> None:
    """An answer before the delay means no hedge and no event."""
    events: list[PolicyEvent] = []
    down = Downstream("ok")
    hedge = Hedge(0.05, clock=FakeClock(), listeners=[events.append])
    assert run(lambda: hedge.acall(down, "a")) == "a-0"
    assert down.started == 1
    assert events == []


def test_slow_primary_is_hedged_and_cancelled() -> None:
    """After ``delay`` a hedge starts; its answer wins and the primary is cancelled."""
    clock = FakeClock()
    down = Downstream("hang", "ok")
    hedge = Hedge(0.05, clock=clock)
    assert run(lambda: hedge.acall(down)) == "v-1"
    assert down.started == 2
    assert down.cancelled == [0]
    assert clock.sleeps == [0.05]


def test_real_time_hedge_uses_the_loop_timer() -> None:
    """With the default asyncio sleep, a hedge starts after ``delay`` real seconds."""

    async def main() -> tuple[str, list[int]]:
        cancelled: list[int] = []
        calls = iter(range(2))

        async def attempt() -> str:
            n = next(calls)
            try:
                await asyncio.sleep(1.0 if n == 0 else 0.0)
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
            return f"attempt {n}"

        began = time.monotonic()
        result = await Hedge(0.01).acall(attempt)
        assert 0.009 <= time.monotonic() - began < 0.5
        return result, cancelled

    assert run(main) == ("attempt 1", [0])


def test_first_success_wins_over_an_earlier_failure() -> None:
    """A failed attempt is not the answer while another may still succeed."""
    clock = FakeClock()
    down = Downstream("hang", "fail")
    hedge = Hedge(0.05, clock=clock)

    async def main() -> str:
        call = asyncio.ensure_future(hedge.acall(down))
        await spin()
        assert not call.done()  # the hedge failed, the primary is still running
        down.release.set()
        return await call

    assert run(main) == "v-0"
    assert down.started == 2


def test_failed_primary_starts_a_hedge_at_once() -> None:
    """A failure launches the next hedge without waiting out the delay."""
    never = asyncio.Event()
    sleeps: list[float] = []

    async def stuck_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await never.wait()

    events: list[PolicyEvent] = []
    down = Downstream("fail", "ok")
    hedge = Hedge(0.05, asleep=stuck_sleep, listeners=[events.append])
    assert run(lambda: hedge.acall(down)) == "v-1"
    assert sleeps == [0.05]  # only the primary's timer was started, and it never fired
    assert [(e.hedge, e.delay) for e in events if isinstance(e, HedgeLaunched)] == [(1, 0.0)]


def test_all_attempts_fail_raises_the_last_error() -> None:
    """When every attempt fails, the error of the last one to fail is raised."""
    down = Downstream("fail", "fail", "fail")
    hedge = Hedge(0.05, max_hedges=2, clock=FakeClock())
    with pytest.raises(ValueError, match=r"^attempt 2$"):
        run(lambda: hedge.acall(down))
    assert down.started == 3


def test_max_hedges_is_respected() -> None:
    """No more than ``max_hedges`` extra attempts start, and no timer runs after the last."""
    clock = FakeClock()
    down = Downstream()  # every attempt hangs until released
    hedge = Hedge(0.05, max_hedges=3, clock=clock)

    async def main() -> str:
        call = asyncio.ensure_future(hedge.acall(down))
        await spin(50)
        started = down.started
        down.release.set()
        result = await call
        assert started == 4
        return result

    assert run(main) in {"v-0", "v-1", "v-2", "v-3"}
    assert down.started == 4
    assert clock.sleeps == [0.05, 0.05, 0.05]


def test_caller_cancellation_cancels_every_attempt() -> None:
    """Cancelling the caller cancels and awaits the primary and its hedges."""
    down = Downstream()
    hedge = Hedge(0.05, clock=FakeClock())

    async def main() -> None:
        call = asyncio.ensure_future(hedge.acall(down))
        await spin()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    run(main)
    assert sorted(down.cancelled) == [0, 1]


def test_events_describe_each_hedge() -> None:
    """A HedgeLaunched event per hedge, with its number, delay and clock reading."""
    clock = FakeClock(100.0)
    events: list[PolicyEvent] = []
    down = Downstream("hang", "hang", "ok")
    hedge = Hedge(0.05, max_hedges=2, name="users", clock=clock, listeners=[events.append])
    assert run(lambda: hedge.acall(down)) == "v-2"
    assert events == [
        HedgeLaunched(kind="hedge", name="users", at=100.05, hedge=1, delay=0.05),
        HedgeLaunched(kind="hedge", name="users", at=100.1, hedge=2, delay=0.05),
    ]


def test_a_failing_asleep_is_raised() -> None:
    """A broken injected sleep surfaces as an error instead of silently hedging."""

    async def broken_sleep(seconds: float) -> None:
        raise RuntimeError("no sleep")

    down = Downstream("hang")
    with pytest.raises(RuntimeError, match="no sleep"):
        run(lambda: Hedge(0.05, asleep=broken_sleep).acall(down))
    assert (down.started, down.cancelled) == (1, [0])


# --- budget and deadline ---------------------------------------------------------------------


def test_budget_pays_for_hedges() -> None:
    """Each call deposits once and each hedge withdraws a token."""
    budget = CountingBudget(tokens=5)
    down = Downstream("hang", "ok")
    hedge = Hedge(0.05, budget=budget, clock=FakeClock())
    assert run(lambda: hedge.acall(down)) == "v-1"
    assert (budget.deposits, budget.requests, budget.tokens) == (1, 1, 4)


def test_budget_refusal_lets_the_primary_carry_on() -> None:
    """A refused hedge is not started, raises nothing, and the primary's answer is used."""
    budget = CountingBudget(tokens=0)
    down = Downstream()
    hedge = Hedge(0.05, max_hedges=3, budget=budget, clock=FakeClock())

    async def main() -> str:
        call = asyncio.ensure_future(hedge.acall(down))
        await spin()
        down.release.set()
        return await call

    assert run(main) == "v-0"
    assert (down.started, budget.deposits, budget.requests) == (1, 1, 1)


def test_budget_refusal_after_a_failure_raises_that_failure() -> None:
    """With no token for a hedge, the failed primary's error is the answer."""
    budget = CountingBudget(tokens=0)
    down = Downstream("fail", "ok")
    hedge = Hedge(0.05, budget=budget, clock=FakeClock())
    with pytest.raises(ValueError, match=r"^attempt 0$"):
        run(lambda: hedge.acall(down))
    assert down.started == 1


def test_real_retry_budget_is_accepted() -> None:
    """interlink's RetryBudget is a HedgeBudget: a call deposits, a hedge withdraws."""
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    down = Downstream("hang", "ok")
    hedge = Hedge(0.05, budget=budget, clock=clock)
    assert run(lambda: hedge.acall(down)) == "v-1"
    snapshot = budget.snapshot()
    assert (snapshot.deposits, snapshot.retries) == (1, 1)


def test_expired_deadline_stops_hedging() -> None:
    """No hedge starts once the current deadline has run out."""
    clock = FakeClock()
    down = Downstream("hang", "ok")
    hedge = Hedge(0.05, clock=clock)

    async def main() -> str:
        with deadline(0.01, clock=clock):  # the 0.05 s hedge delay outlasts it
            call = asyncio.ensure_future(hedge.acall(down))
            await spin()
        down.release.set()
        return await call

    assert run(main) == "v-0"
    assert down.started == 1


# --- adaptive delay --------------------------------------------------------------------------


def test_adaptive_delay_falls_back_until_enough_samples() -> None:
    """Before MIN_SAMPLES successes the fixed delay is used."""
    clock = FakeClock()
    hedge = Hedge(0.05, adaptive=True, clock=clock, asleep=never_fires)

    async def answer_in(seconds: float) -> float:
        clock.advance(seconds)
        return seconds

    async def main() -> None:
        for _ in range(MIN_SAMPLES - 1):
            await hedge.acall(answer_in, 0.001)

    run(main)
    assert hedge.current_delay() == 0.05


def test_adaptive_delay_converges_to_the_percentile() -> None:
    """After enough calls the delay is the p95 of the recorded latencies."""
    clock = FakeClock()
    # A FakeClock's own asleep would advance the shared clock while the attempt runs.
    hedge = Hedge(0.5, adaptive=True, clock=clock, asleep=never_fires)

    async def answer_in(seconds: float) -> float:
        clock.advance(seconds)
        return seconds

    async def main() -> None:
        for ms in range(1, 101):
            await hedge.acall(answer_in, ms / 1000)

    run(main)
    assert hedge.latencies is not None
    assert hedge.latencies.recorded == 100
    assert hedge.current_delay() == pytest.approx(0.095)


def test_adaptive_delay_never_drops_below_min_delay() -> None:
    """Instant answers still leave ``min_delay`` between attempts."""
    hedge = Hedge(0.05, adaptive=True, min_delay=0.002, clock=FakeClock())
    assert hedge.latencies is not None
    for _ in range(MIN_SAMPLES):
        hedge.latencies.record(0.0)
    assert hedge.current_delay() == 0.002


def test_fixed_delay_keeps_no_latencies() -> None:
    """Without adaptive, no tracker exists and the delay never moves."""
    hedge = Hedge(0.05)
    assert hedge.latencies is None
    assert hedge.current_delay() == 0.05


# --- latency tracker -------------------------------------------------------------------------


def test_tracker_is_silent_before_min_samples() -> None:
    """No percentile until ``min_samples`` latencies were recorded."""
    tracker = LatencyTracker(10, min_samples=3)
    tracker.record(1.0)
    tracker.record(2.0)
    assert tracker.value() is None
    tracker.record(3.0)
    assert tracker.value() == 3.0


def test_tracker_keeps_only_the_last_size_latencies() -> None:
    """The ring forgets the oldest latencies once full."""
    tracker = LatencyTracker(4, percentile=1.0, min_samples=1, refresh=1)
    for seconds in (9.0, 1.0, 2.0, 3.0, 4.0):
        tracker.record(seconds)
    assert len(tracker) == 4
    assert tracker.value() == 4.0  # the 9.0 was overwritten


def test_tracker_caches_between_refreshes() -> None:
    """The percentile is recomputed at most once every ``refresh`` records."""
    tracker = LatencyTracker(100, percentile=1.0, min_samples=1, refresh=3)
    tracker.record(1.0)
    assert tracker.value() == 1.0
    tracker.record(50.0)
    tracker.record(60.0)
    assert tracker.value() == 1.0  # cached: only 2 records since
    tracker.record(70.0)
    assert tracker.value() == 70.0


def test_tracker_validates_its_settings() -> None:
    """min_samples cannot exceed the ring it is counted in."""
    with pytest.raises(ValueError, match=r"^'min_samples' must be <= size \(5\): 6$"):
        LatencyTracker(5, min_samples=6)


@given(
    samples=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=60),
    size=st.integers(1, 30),
    percentile=st.floats(0.01, 1.0),
)
def test_tracker_is_nearest_rank_of_the_window(
    samples: list[float], size: int, percentile: float
) -> None:
    """With refresh=1 the value is the nearest-rank percentile of the last ``size`` samples."""
    tracker = LatencyTracker(size, percentile=percentile, min_samples=1, refresh=1)
    for s in samples:
        tracker.record(s)
    window = sorted(samples[-size:])
    rank = max(math.ceil(percentile * len(window) - 1e-9), 1)
    assert tracker.value() == window[rank - 1]
