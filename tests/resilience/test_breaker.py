"""The circuit breaker's transitions, window, front doors and errors, on a fake clock."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import threading
import time

import pytest

from interlink.errors import CircuitOpenError, InterlinkError, RejectedError
from interlink.resilience.breaker import CircuitBreaker, State
from interlink.resilience.events import CallRejected, PolicyEvent, StateChanged
from interlink.testing import FakeClock


class Boom(Exception):
    """A downstream failure."""


def ok() -> str:
    return "ok"


def fail() -> str:
    raise Boom("down")


def run(breaker: CircuitBreaker, outcomes: str) -> None:
    """Drive one call per character: ``s`` success, ``f`` failure."""
    for c in outcomes:
        if c == "s":
            breaker.call(ok)
        else:
            with pytest.raises(Boom):
                breaker.call(fail)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker("menu", clock=clock)


def test_defaults_are_the_documented_ones() -> None:
    """The defaults are Resilience4j's classic settings, pinned."""
    d = CircuitBreaker("x").describe()
    assert d["failure_rate_threshold"] == 0.5
    assert d["window"] == 30.0
    assert d["minimum_calls"] == 10
    assert d["cooldown"] == 60.0
    assert d["half_open_calls"] == 1
    assert d["slow_call_duration"] is None
    assert d["slow_call_rate_threshold"] == 1.0


def test_half_failures_in_window_open(breaker: CircuitBreaker) -> None:
    """50 % failures over 10 calls in the window opens the breaker."""
    run(breaker, "sfsfsfsfs")
    assert breaker.state is State.CLOSED
    run(breaker, "f")
    assert breaker.state is State.OPEN


def test_half_failures_spread_over_the_window_open(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Five failures among ten calls spread over 27 s of the 30 s window open the breaker."""
    for c in "sfsfsfsfs":
        run(breaker, c)
        clock.advance(3.0)
    assert breaker.state is State.CLOSED
    run(breaker, "f")
    assert breaker.state is State.OPEN
    assert breaker.metrics.calls == 10


def test_below_minimum_calls_never_opens(breaker: CircuitBreaker) -> None:
    """Nine failures are fewer than minimum_calls=10: still closed."""
    run(breaker, "f" * 9)
    assert breaker.state is State.CLOSED


def test_below_threshold_stays_closed(breaker: CircuitBreaker) -> None:
    """40 % failures stay under a 50 % threshold."""
    run(breaker, "ssffssffss" * 3)
    assert breaker.state is State.CLOSED


def test_open_rejects_without_calling(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """While open the function is not called and the error names breaker and seconds left."""
    run(breaker, "f" * 10)
    calls = []
    clock.advance(15)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: calls.append(1))
    assert calls == []
    assert info.value.name == "menu"
    assert info.value.remaining == pytest.approx(45.0)
    assert str(info.value) == (
        "circuit breaker 'menu' is open: calls are rejected for another 45.000s"
    )
    assert isinstance(info.value, RejectedError)
    assert isinstance(info.value, InterlinkError)


def test_rejected_for_the_whole_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Rejected until 60 s have passed, then one trial is let through."""
    run(breaker, "f" * 10)
    clock.advance(59.999)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(0.001)
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state is State.CLOSED


def test_trial_failure_reopens_with_new_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A failed trial opens the breaker again for a full cooldown."""
    run(breaker, "f" * 10)
    clock.advance(60)
    run(breaker, "f")
    assert breaker.state is State.OPEN
    clock.advance(59)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.remaining == pytest.approx(1.0)


def test_half_open_admits_only_the_trial_calls(clock: FakeClock) -> None:
    """With half_open_calls=2 a third concurrent call is rejected; two successes close."""
    breaker = CircuitBreaker("b", half_open_calls=2, minimum_calls=1, clock=clock)
    run(breaker, "f")
    clock.advance(60)
    p1, p2 = breaker.try_acquire(), breaker.try_acquire()
    assert p1
    assert p2
    assert breaker.try_acquire() == 0
    with pytest.raises(CircuitOpenError) as info:
        breaker.acquire()
    assert info.value.state == "half_open"
    assert info.value.remaining is None
    breaker.on_success(p1)
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(p2)
    assert breaker.state is State.CLOSED


def test_closed_again_starts_with_fresh_window(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """After recovery the old failures are forgotten."""
    run(breaker, "f" * 10)
    clock.advance(60)
    run(breaker, "s")
    assert breaker.metrics.calls == 0
    run(breaker, "f" * 9)
    assert breaker.state is State.CLOSED


def test_old_failures_slide_out_of_the_window(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Failures older than the window no longer count."""
    run(breaker, "f" * 9)
    clock.advance(31)
    run(breaker, "f")
    assert breaker.state is State.CLOSED
    assert breaker.metrics.failures == 1


def test_successes_before_a_quiet_spell_slide_out(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Successes booked at one instant leave the window with it, even unsampled ones."""
    run(breaker, "s" * 50)
    clock.advance(31)
    run(breaker, "f" * 10)
    assert breaker.state is State.OPEN


def test_recent_successes_keep_it_closed(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Successes inside the window dilute the failure rate."""
    run(breaker, "s" * 11)
    clock.advance(10)
    run(breaker, "f" * 10)
    assert breaker.state is State.CLOSED


def test_slow_calls_open_the_breaker(clock: FakeClock) -> None:
    """Calls slower than slow_call_duration count toward the slow-call rate."""
    breaker = CircuitBreaker(
        "slow",
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        minimum_calls=4,
        clock=clock,
    )

    def slow() -> str:
        clock.advance(2.0)
        return "late"

    for _ in range(3):
        breaker.call(slow)
    assert breaker.state is State.CLOSED
    breaker.call(slow)
    assert breaker.state is State.OPEN
    assert breaker.metrics.slow_calls == 4  # the window that opened it is kept for inspection


def test_count_window_uses_last_n_calls(clock: FakeClock) -> None:
    """A count window of 4 opens on 2 failures among the last 4 calls."""
    breaker = CircuitBreaker("c", window_type="count", window=4, minimum_calls=4, clock=clock)
    run(breaker, "ssssssfs")
    assert breaker.state is State.CLOSED
    run(breaker, "f")
    assert breaker.state is State.OPEN


def test_ignored_and_unrecorded_exceptions(clock: FakeClock) -> None:
    """Ignored errors count as nothing; unrecorded ones count as successes."""

    class NotFound(Exception):
        pass

    class Invalid(Exception):
        pass

    breaker = CircuitBreaker(
        "i",
        minimum_calls=2,
        record_exceptions=(Boom,),
        ignore_exceptions=(NotFound,),
        clock=clock,
    )

    def raise_(exc: Exception) -> None:
        raise exc

    for exc in (NotFound(), NotFound(), Invalid()):
        with pytest.raises(type(exc)):
            breaker.call(raise_, exc)
    run(breaker, "f")
    m = breaker.metrics
    assert (m.calls, m.failures) == (2, 1)
    assert breaker.state is State.OPEN


def test_cancellation_is_not_a_failure(clock: FakeClock) -> None:
    """CancelledError (a BaseException) does not count as a failure."""
    breaker = CircuitBreaker("c", minimum_calls=1, clock=clock)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    for _ in range(5):
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(breaker.acall(cancelled))
    assert breaker.state is State.CLOSED
    assert breaker.metrics.failures_total == 0


def test_force_open_disable_reset(breaker: CircuitBreaker) -> None:
    """The operator switches: forced open rejects, disabled records nothing, reset closes."""
    breaker.force_open()
    assert breaker.state is State.FORCED_OPEN
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(ok)
    assert info.value.state == "forced_open"
    breaker.disable()
    run(breaker, "f" * 20)
    assert breaker.state is State.DISABLED
    assert breaker.metrics.calls == 0
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert breaker.call(ok) == "ok"


def test_listeners_see_transitions_and_rejections(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """StateChanged and CallRejected reach listeners, with clock readings."""
    seen: list[PolicyEvent] = []
    breaker.add_listener(seen.append)
    run(breaker, "f" * 10)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    clock.advance(60)
    run(breaker, "s")
    changes = [(e.old, e.new) for e in seen if isinstance(e, StateChanged)]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    rejected = [e for e in seen if isinstance(e, CallRejected)]
    assert len(rejected) == 1
    assert rejected[0].remaining == pytest.approx(60.0)
    assert rejected[0].at == pytest.approx(1000.0)


def test_failing_listener_does_not_break_calls(breaker: CircuitBreaker) -> None:
    """A listener that raises is logged, the call's outcome stands."""

    def bad(event: PolicyEvent) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(bad)
    run(breaker, "f" * 10)
    assert breaker.state is State.OPEN


def test_metrics_count_everything(breaker: CircuitBreaker) -> None:
    """Lifetime totals are exact: successes, failures and rejections."""
    run(breaker, "s" * 100 + "f" * 100)
    for _ in range(7):
        with pytest.raises(CircuitOpenError):
            breaker.call(ok)
    m = breaker.metrics
    assert (m.successes_total, m.failures_total, m.rejected_total) == (100, 100, 7)
    assert m.state is State.OPEN


def test_try_acquire_never_raises(breaker: CircuitBreaker) -> None:
    """The exception-free check returns 0 when open and a permit otherwise."""
    permit = breaker.try_acquire()
    assert permit
    breaker.on_success(permit)
    run(breaker, "f" * 9)
    assert breaker.state is State.OPEN
    assert breaker.try_acquire() == 0


def test_closed_permit_only_on_the_closed_fast_path(clock: FakeClock) -> None:
    """A permit while CLOSED; 0, with nothing counted or moved, when open or timing calls."""
    breaker = CircuitBreaker("menu", clock=clock)
    permit = breaker.closed_permit()
    assert permit
    breaker.on_success(permit)
    run(breaker, "f" * 9)
    assert breaker.closed_permit() == 0
    clock.advance(60)
    assert breaker.closed_permit() == 0  # the cooldown is over: acquire() moves it on
    assert breaker.metrics.rejected_total == 0
    assert breaker.state is State.HALF_OPEN
    timed = CircuitBreaker("menu", slow_call_duration=1.0, clock=clock)
    assert timed.closed_permit() == 0
    assert timed.try_acquire()


def test_admit_hands_back_the_wait_when_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """admit() returns a permit, then, while OPEN, the seconds left (counted as a rejection)."""
    permit = breaker.admit()
    assert isinstance(permit, int)
    assert permit
    breaker.on_success(permit)
    run(breaker, "f" * 9)
    clock.advance(15)
    left = breaker.admit()
    assert isinstance(left, float)
    assert left == pytest.approx(45.0)
    assert breaker.metrics.rejected_total == 1
    breaker.force_open()
    with pytest.raises(CircuitOpenError) as info:
        breaker.admit()
    assert (info.value.state, info.value.remaining) == ("forced_open", None)
    assert breaker.try_acquire() == 0
    assert breaker.metrics.rejected_total == 3


def test_rejection_error_says_open_with_the_wait(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Every front door's rejection names state and seconds left, as acquire()'s does."""
    run(breaker, "f" * 10)
    clock.advance(20)

    @breaker
    def decorated() -> str:
        return "ok"

    async def rejections() -> list[CircuitOpenError]:
        @breaker
        async def adecorated() -> str:
            return "ok"

        errors = []
        for attempt in (breaker.acall(asyncio.sleep, 0), adecorated()):
            with pytest.raises(CircuitOpenError) as info:
                await attempt
            errors.append(info.value)
        return errors

    errors = asyncio.run(rejections())
    for door in (breaker.acquire, decorated, lambda: breaker.call(ok)):
        with pytest.raises(CircuitOpenError) as info:
            door()
        errors.append(info.value)
    assert [(e.name, e.state, e.remaining) for e in errors] == [("menu", "open", 40.0)] * 5
    assert breaker.metrics.rejected_total == 5


def test_listener_added_while_open_sees_each_rejection(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    """Rejections are reported from the moment a listener is added, and counted throughout."""
    run(breaker, "f" * 10)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)  # nobody listens yet
    seen: list[PolicyEvent] = []
    breaker.add_listener(seen.append)
    clock.advance(10)
    for _ in range(2):
        with pytest.raises(CircuitOpenError) as info:
            breaker.call(ok)
        assert info.value.remaining == pytest.approx(50.0)
    assert [(e.state, e.remaining) for e in seen if isinstance(e, CallRejected)] == [
        ("open", pytest.approx(50.0))
    ] * 2
    breaker.remove_listener(seen.append)
    with pytest.raises(CircuitOpenError):
        breaker.call(ok)
    assert len(seen) == 2
    assert breaker.metrics.rejected_total == 4
    clock.advance(50)
    assert breaker.call(ok) == "ok"  # the cooldown still ends on time
    assert breaker.state is State.CLOSED


def test_stale_permit_is_not_a_trial(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """A call admitted while closed that fails during HALF_OPEN does not reopen it."""
    early = breaker.acquire()
    run(breaker, "f" * 10)
    clock.advance(60)
    trial = breaker.acquire()
    breaker.on_failure(early)
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(trial)
    assert breaker.state is State.CLOSED


def test_trial_of_an_earlier_episode_is_not_a_trial_now(clock: FakeClock) -> None:
    """A trial still running when its episode ended (reopened) cannot close the next one."""
    breaker = CircuitBreaker("e", half_open_calls=2, minimum_calls=1, clock=clock)
    run(breaker, "f")
    clock.advance(60)
    old_trial = breaker.acquire()
    breaker.on_failure(breaker.acquire())  # the episode ends: OPEN again
    clock.advance(60)
    new_trial = breaker.acquire()
    breaker.on_success(old_trial)  # late news from the first episode
    breaker.on_success(new_trial)
    assert breaker.state is State.HALF_OPEN  # one of two trials of this episode so far
    assert breaker.try_acquire()  # and the second trial slot is still free


def test_decorator_on_def_and_async_def(clock: FakeClock) -> None:
    """@breaker keeps name and docstring and guards both kinds of function."""
    breaker = CircuitBreaker("d", minimum_calls=1, clock=clock)

    @breaker
    def sync_fn(x: int) -> int:
        """Doubles."""
        return 2 * x

    @breaker
    async def async_fn(x: int) -> int:
        """Triples."""
        return 3 * x

    assert sync_fn(2) == 4
    assert asyncio.run(async_fn(2)) == 6
    assert sync_fn.__name__ == "sync_fn"
    assert async_fn.__doc__ == "Triples."
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        sync_fn(1)
    with pytest.raises(CircuitOpenError):
        asyncio.run(async_fn(1))


def test_decorated_methods_get_self(clock: FakeClock) -> None:
    """Decorating a method passes the instance through."""
    breaker = CircuitBreaker("m", clock=clock)

    class Client:
        factor = 5

        @breaker
        def get(self, x: int) -> int:
            return self.factor * x

    assert Client().get(2) == 10


def test_async_open_rejects(clock: FakeClock) -> None:
    """acall rejects while open without awaiting the function."""
    breaker = CircuitBreaker("a", minimum_calls=1, clock=clock)

    async def boom() -> None:
        raise Boom

    async def main() -> None:
        with pytest.raises(Boom):
            await breaker.acall(boom)
        with pytest.raises(CircuitOpenError):
            await breaker.acall(boom)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate_threshold": 1.5}, "'failure_rate_threshold' must be in (0, 1]: 1.5"),
        ({"failure_rate_threshold": 0}, "'failure_rate_threshold' must be in (0, 1]: 0"),
        ({"slow_call_rate_threshold": -1}, "'slow_call_rate_threshold' must be in (0, 1]: -1"),
        ({"window": -3}, "'window' must be a finite number > 0: -3"),
        ({"cooldown": -1.0}, "'cooldown' must be a finite number >= 0: -1.0"),
        ({"minimum_calls": 0}, "'minimum_calls' must be an integer >= 1: 0"),
        ({"half_open_calls": 0}, "'half_open_calls' must be an integer >= 1: 0"),
        ({"slow_call_duration": 0}, "'slow_call_duration' must be a finite number > 0: 0"),
        ({"window_type": "sliding"}, "'window_type' must be 'time' or 'count': 'sliding'"),
        ({"clock_every": 3}, "'clock_every' must be a power of two >= 1: 3"),
        ({"record_exceptions": (int,)}, "'record_exceptions' must be a tuple of exception types"),
    ],
)
def test_bad_configuration_names_the_parameter(kwargs: dict[str, object], message: str) -> None:
    """Each bad setting raises ValueError naming the parameter and the value."""
    with pytest.raises(ValueError) as info:
        CircuitBreaker("x", **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_empty_name_is_refused() -> None:
    """A breaker needs a name to be told apart in errors and metrics."""
    with pytest.raises(ValueError, match="'name' must be a non-empty string: ''"):
        CircuitBreaker("")


def test_threads_half_open_never_admits_more_than_allowed(clock: FakeClock) -> None:
    """16 threads racing for trial permits: exactly half_open_calls get one."""
    breaker = CircuitBreaker("t", half_open_calls=3, minimum_calls=1, clock=clock)
    run(breaker, "f")
    clock.advance(60)
    permits: list[int] = []
    barrier = threading.Barrier(16)

    def grab() -> None:
        barrier.wait()
        for _ in range(100):
            p = breaker.try_acquire()
            if p:
                permits.append(p)

    threads = [threading.Thread(target=grab) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(permits) == 3


def test_threads_keep_counters_exact() -> None:
    """8 threads x 5,000 calls: every success and failure is counted once."""
    breaker = CircuitBreaker("t", failure_rate_threshold=1.0, minimum_calls=10**9)

    def work(i: int) -> None:
        for j in range(5000):
            if (i + j) % 10 == 0:
                with pytest.raises(Boom):
                    breaker.call(fail)
            else:
                breaker.call(ok)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    m = breaker.metrics
    assert m.successes_total == 36000
    assert m.failures_total == 4000
    assert m.calls == 40000
    assert m.failures == 4000


def test_tasks_half_open_admits_one_trial(clock: FakeClock) -> None:
    """100 concurrent tasks in HALF_OPEN: one runs, 99 are rejected, then it closes."""
    breaker = CircuitBreaker("a", minimum_calls=1, clock=clock)
    run(breaker, "f")
    clock.advance(60)
    ran = 0

    async def trial() -> None:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.001)

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(
            *(breaker.acall(trial) for _ in range(100)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert ran == 1
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 99
    assert breaker.state is State.CLOSED


def test_breaker_does_not_hold_a_lock_during_the_call() -> None:
    """Eight threads sleeping 20 ms inside the breaker overlap instead of queueing."""
    breaker = CircuitBreaker("p")

    def nap() -> None:
        time.sleep(0.02)

    def work() -> None:
        for _ in range(3):
            breaker.call(nap)

    threads = [threading.Thread(target=work) for _ in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    assert elapsed < 0.3  # serialised it would take 8 * 3 * 20 ms = 480 ms


def test_threads_hammering_one_breaker_keep_its_counts_exact() -> None:
    """Eight threads making successes, failures and rejections at once: every outcome is
    counted once (the lock-free success count included), and the metrics agree with the calls.
    Metrics are read while the threads run, so a reading never takes a count away."""
    breaker = CircuitBreaker("hammer", failure_rate_threshold=1.0, minimum_calls=10**9)
    per_thread = 4_000
    ok = threading.Event()

    def boom() -> None:
        raise ValueError("down")

    def work(n: int) -> None:
        ok.wait()
        for i in range(per_thread):
            if (i + n) % 4 == 0:
                with contextlib.suppress(ValueError):
                    breaker.call(boom)
            else:
                breaker.call(int)
            if i % 500 == 0:
                breaker.metrics  # noqa: B018 - a read that races the counting

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    ok.set()
    for t in threads:
        t.join()
    m = breaker.metrics
    assert m.failures_total == 8 * per_thread // 4
    assert m.successes_total == 8 * per_thread * 3 // 4
    assert m.calls == 8 * per_thread  # every outcome booked into the window too
    assert m.failures == m.failures_total
    assert breaker.state is State.CLOSED

    breaker.force_open()
    rejected = 0

    def knock() -> None:
        nonlocal rejected
        for i in range(per_thread):
            if not breaker.try_acquire():
                with lock:
                    rejected += 1
            if i % 500 == 0:
                breaker.metrics  # noqa: B018

    lock = threading.Lock()
    threads = [threading.Thread(target=knock) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rejected == 8 * per_thread
    assert breaker.metrics.rejected_total == rejected


def test_default_breakers_share_one_options_object() -> None:
    """Breakers built with the defaults share DEFAULT_OPTIONS; others get their own."""
    from interlink.resilience.breaker import DEFAULT_OPTIONS, BreakerOptions

    assert CircuitBreaker("a").options is DEFAULT_OPTIONS
    assert CircuitBreaker("b").options is CircuitBreaker("c").options
    custom = CircuitBreaker("d", cooldown=5)
    assert custom.options is not DEFAULT_OPTIONS
    assert custom.options == BreakerOptions(cooldown=5)


def test_from_options_shares_and_behaves(clock: FakeClock) -> None:
    """from_options uses the given object as is, guarded settings included."""
    import dataclasses

    from interlink.resilience.breaker import BreakerOptions

    opts = BreakerOptions(minimum_calls=2, cooldown=1.0)
    a = CircuitBreaker.from_options("a", opts, clock=clock)
    b = CircuitBreaker.from_options(
        "b", dataclasses.replace(opts, window_type="count"), clock=clock
    )
    assert a.options is opts
    run(a, "ff")
    assert a.state is State.OPEN
    run(b, "ff")
    assert b.state is State.OPEN
    with pytest.raises(ValueError, match="'cooldown' must be a finite number >= 0: -2"):
        dataclasses.replace(opts, cooldown=-2)


def test_idle_breaker_is_small() -> None:
    """An idle breaker with default settings keeps under 300 bytes (tracemalloc)."""
    import gc
    import tracemalloc

    keep: list[CircuitBreaker | None] = [None] * 2000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(len(keep)):
            keep[i] = CircuitBreaker("idle")
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (after - before) / len(keep) <= 300


# -- concurrency stress: many open / half-open cycles ----------------------------------------


def _half_open_episodes(breaker: CircuitBreaker) -> list[int]:
    """Subscribe a counter of transitions into HALF_OPEN; returns the one-element tally."""
    episodes = [0]

    def count(event: PolicyEvent) -> None:
        if isinstance(event, StateChanged) and event.new == "half_open":
            episodes[0] += 1

    breaker.add_listener(count)
    return episodes


def test_threads_never_get_more_trial_permits_than_allowed_over_many_cycles() -> None:
    """8 threads through repeated OPEN -> HALF_OPEN cycles: no episode hands out more than
    half_open_calls trial permits, never more run at once, and every counter is exact."""
    clock = FakeClock(0.0)
    breaker = CircuitBreaker("t", half_open_calls=2, minimum_calls=4, cooldown=1.0, clock=clock)
    episodes = _half_open_episodes(breaker)
    lock = threading.Lock()
    trials: collections.Counter[int] = collections.Counter()  # permit (= episode) -> trials
    running: collections.Counter[int] = collections.Counter()
    peak = 0
    tally = {"ok": 0, "failed": 0, "rejected": 0}
    barrier = threading.Barrier(8)

    give_up = time.monotonic() + 20.0

    def work(seed: int) -> None:
        nonlocal peak
        rng = random.Random(seed)
        barrier.wait()
        n = 0
        # 2,000 calls each, and on until the breaker has cycled (how fast it does depends on
        # how the threads happen to interleave)
        while n < 2000 or (episodes[0] < 5 and time.monotonic() < give_up):
            n += 1
            if rng.random() < 0.02:
                clock.advance(0.5)
            permit = breaker.try_acquire()
            if not permit:
                with lock:
                    tally["rejected"] += 1
                continue
            # A permit is the breaker's state word at admission (white box: bits 0-2 hold
            # the state, 2 is HALF_OPEN), so it names the episode the trial belongs to.
            trial = permit & 7 == 2
            if trial:
                with lock:
                    trials[permit] += 1
                    running[permit] += 1
                    peak = max(peak, running[permit])
            time.sleep(0)  # let other threads race for permits while this call "runs"
            failed = rng.random() < 0.5
            if trial:
                with lock:
                    running[permit] -= 1
            if failed:
                breaker.on_failure(permit)
            else:
                breaker.on_success(permit)
            with lock:
                tally["failed" if failed else "ok"] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert episodes[0] >= 5  # the stress really went round the cycle
    assert max(trials.values()) <= 2
    assert peak <= 2
    m = breaker.metrics
    assert (m.successes_total, m.failures_total, m.rejected_total) == (
        tally["ok"],
        tally["failed"],
        tally["rejected"],
    )


def test_threads_through_call_keep_every_counter_exact() -> None:
    """8 threads x 1,500 calls (60 % failing) through call() while the breaker cycles: each call
    is exactly one of success, failure or rejection, and the metrics agree with the callers'."""
    clock = FakeClock(0.0)
    breaker = CircuitBreaker("c", minimum_calls=5, cooldown=1.0, half_open_calls=3, clock=clock)
    episodes = _half_open_episodes(breaker)
    tallies = [[0, 0, 0] for _ in range(8)]  # ok, failed, rejected per thread

    give_up = time.monotonic() + 20.0

    def work(i: int) -> None:
        rng = random.Random(i)
        n = 0
        while n < 1500 or (episodes[0] < 3 and time.monotonic() < give_up):  # see above
            n += 1
            if rng.random() < 0.01:
                clock.advance(0.5)
            try:
                breaker.call(fail if rng.random() < 0.6 else ok)
                tallies[i][0] += 1
            except Boom:
                tallies[i][1] += 1
            except CircuitOpenError:
                tallies[i][2] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok_n, failed_n, rejected_n = (sum(t[k] for t in tallies) for k in range(3))
    assert episodes[0] >= 3
    m = breaker.metrics
    assert (m.successes_total, m.failures_total, m.rejected_total) == (ok_n, failed_n, rejected_n)
    assert ok_n + failed_n + rejected_n >= 8 * 1500


def test_tasks_never_run_more_trials_than_allowed_over_many_cycles() -> None:
    """200 tasks through acall() over repeated cycles: no HALF_OPEN episode admits or runs more
    than half_open_calls trial calls, and success, failure and rejection counts are exact."""
    clock = FakeClock(0.0)
    breaker = CircuitBreaker("a", half_open_calls=3, minimum_calls=5, cooldown=1.0, clock=clock)
    episodes = _half_open_episodes(breaker)
    rng = random.Random(3)
    trials: collections.Counter[int] = collections.Counter()  # episode -> trials admitted
    running: collections.Counter[int] = collections.Counter()
    peak = 0
    tally = {"ok": 0, "failed": 0, "rejected": 0}

    async def downstream(failing: bool) -> str:
        nonlocal peak
        # Nothing runs between admission and here, so the state now is the admitting state.
        # A trial of an earlier episode may still run: it was admitted by that episode.
        episode = episodes[0] if breaker.state is State.HALF_OPEN else 0
        if episode:
            trials[episode] += 1
            running[episode] += 1
            peak = max(peak, running[episode])
        try:
            for _ in range(rng.randrange(1, 4)):
                await asyncio.sleep(0)
            if failing:
                raise Boom
            return "ok"
        finally:
            running[episode] -= 1

    async def caller() -> None:
        for _ in range(25):
            if rng.random() < 0.02:
                clock.advance(0.5)
            try:
                await breaker.acall(downstream, rng.random() < 0.5)
                tally["ok"] += 1
            except Boom:
                tally["failed"] += 1
            except CircuitOpenError:
                tally["rejected"] += 1
                await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(200)))

    asyncio.run(main())
    assert episodes[0] >= 5
    assert max(trials.values()) <= 3
    assert 1 <= peak <= 3
    m = breaker.metrics
    assert (m.successes_total, m.failures_total, m.rejected_total) == (
        tally["ok"],
        tally["failed"],
        tally["rejected"],
    )


@pytest.mark.parametrize("window_type", ["time", "count"])
def test_window_memory_is_bounded_whatever_the_traffic(window_type: str) -> None:
    """20,000 calls (10 % failing) sliding through many buckets add no memory after warm-up."""
    import gc
    import tracemalloc

    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "m",
        window=30 if window_type == "count" else 30.0,
        window_type=window_type,  # type: ignore[arg-type]
        minimum_calls=10**9,
        clock=clock,
    )

    def traffic(n: int) -> None:
        for i in range(n):
            clock.advance(0.01)
            with contextlib.suppress(Boom):
                breaker.call(fail if i % 10 == 0 else ok)

    traffic(5000)  # the window and its buckets exist from here on
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        traffic(20_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1024
    assert breaker.metrics.failures_total == 2500
