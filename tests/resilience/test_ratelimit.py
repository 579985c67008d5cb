"""RateLimiter: token bucket refill, waiting, reservation and the rate bound."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.errors import RateLimited, RejectedError
from interlink.resilience.deadline import deadline
from interlink.resilience.events import PolicyEvent, RateLimitRejected
from interlink.resilience.ratelimit import RateLimiter
from interlink.testing import FakeClock

# -- configuration ------------------------------------------------------------------------------


def test_rate_must_be_positive() -> None:
    """A zero rate is refused, naming the parameter."""
    with pytest.raises(ValueError, match=r"^'rate' must be a finite number > 0: 0$"):
        RateLimiter(0)


def test_burst_must_be_a_positive_int() -> None:
    """A bucket that holds nothing is refused."""
    with pytest.raises(ValueError, match=r"^'burst' must be an integer >= 1: 0$"):
        RateLimiter(1, 0)


def test_timeout_must_not_be_negative() -> None:
    """A negative default wait is refused."""
    with pytest.raises(ValueError, match=r"^'timeout' must be a finite number >= 0: -1$"):
        RateLimiter(1, timeout=-1)


@pytest.mark.parametrize(("rate", "burst"), [(0.5, 1), (1, 1), (2.5, 3), (100, 100)])
def test_default_burst_is_one_second_of_tokens(rate: float, burst: int) -> None:
    """burst defaults to max(1, ceil(rate))."""
    assert RateLimiter(rate).burst == burst


def test_describe_lists_the_configuration() -> None:
    """describe() is the configuration, stable for pipeline tests."""
    limiter = RateLimiter(5, 2, timeout=0.5, name="api")
    assert limiter.describe() == {
        "policy": "rate_limiter",
        "name": "api",
        "rate": 5.0,
        "burst": 2,
        "timeout": 0.5,
    }


def test_more_tokens_than_burst_is_a_value_error() -> None:
    """A request the bucket could never hold fails loudly instead of waiting forever."""
    limiter = RateLimiter(10, 3, clock=FakeClock())
    with pytest.raises(ValueError, match=r"^'tokens' must be <= burst \(3\): 4$"):
        limiter.acquire(timeout=None, tokens=4)
    with pytest.raises(ValueError, match=r"^'tokens' must be an integer >= 1: 0$"):
        limiter.try_acquire(0)


# -- the bucket ---------------------------------------------------------------------------------


def test_burst_then_empty() -> None:
    """A full bucket lets `burst` calls through at once, then try_acquire says no."""
    limiter = RateLimiter(2, 3, clock=FakeClock())
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_refills_at_rate() -> None:
    """After 1/rate seconds exactly one more token is there."""
    clock = FakeClock()
    limiter = RateLimiter(4, 1, clock=clock)
    assert limiter.try_acquire()
    clock.advance(0.2)
    assert not limiter.try_acquire()
    clock.advance(0.05)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_refill_is_capped_at_burst() -> None:
    """A long idle period fills the bucket only up to burst."""
    clock = FakeClock()
    limiter = RateLimiter(10, 2, clock=clock)
    limiter.try_acquire(2)
    clock.advance(3600)
    assert limiter.available == 2
    assert [limiter.try_acquire() for _ in range(3)] == [True, True, False]


def test_clock_stepping_back_adds_nothing() -> None:
    """A clock that goes backwards neither refills nor drains the bucket."""
    now = [100.0]
    limiter = RateLimiter(1, 1, clock=lambda: now[0])
    limiter.try_acquire()
    now[0] = 50.0  # a misbehaving clock
    assert limiter.available == 0
    now[0] = 100.5
    assert limiter.available == 0.5


def test_multi_token_try_acquire() -> None:
    """try_acquire(n) takes n tokens or none."""
    limiter = RateLimiter(1, 5, clock=FakeClock())
    assert limiter.try_acquire(3)
    assert not limiter.try_acquire(3)
    assert limiter.available == 2


def test_retry_after_is_the_time_to_the_next_token() -> None:
    """retry_after() is 0 with a token in the bucket, else the deficit over the rate."""
    clock = FakeClock()
    limiter = RateLimiter(4, 1, clock=clock)
    assert limiter.retry_after() == 0.0
    limiter.try_acquire()
    assert limiter.retry_after() == 0.25
    clock.advance(0.1)
    assert limiter.retry_after() == pytest.approx(0.15)


# -- waiting ------------------------------------------------------------------------------------


def test_acquire_takes_a_token_without_sleeping() -> None:
    """With a token in the bucket, acquire() does not sleep."""
    clock = FakeClock()
    RateLimiter(1, 1, clock=clock).acquire()
    assert clock.sleeps == []


def test_acquire_sleeps_exactly_the_deficit() -> None:
    """acquire() sleeps deficit/rate, through the clock's sleep."""
    clock = FakeClock()
    limiter = RateLimiter(4, 2, clock=clock)
    limiter.acquire(tokens=2)
    clock.advance(0.125)  # half a token back
    limiter.acquire(timeout=1.0, tokens=2)
    assert clock.sleeps == [0.375]
    assert clock.now == 0.5


def test_acquire_uses_the_injected_sleep() -> None:
    """An explicit sleep wins over the clock's own."""
    clock = FakeClock()
    slept: list[float] = []
    limiter = RateLimiter(2, 1, clock=clock, sleep=slept.append)
    limiter.acquire()
    limiter.acquire(timeout=None)
    assert (slept, clock.sleeps) == ([0.5], [])


def test_acquire_beyond_timeout_raises_rate_limited() -> None:
    """When the token would come after the timeout, acquire() raises without sleeping."""
    clock = FakeClock()
    limiter = RateLimiter(2, 1, name="geo", clock=clock)
    limiter.acquire()
    with pytest.raises(RateLimited) as info:
        limiter.acquire(timeout=0.4)
    err = info.value
    assert isinstance(err, RejectedError)
    assert (err.name, err.rate, err.burst, err.retry_after) == ("geo", 2.0, 1, 0.5)
    assert str(err) == "rate limiter 'geo' is out of tokens (2/s, burst 1): next token in 0.500s"
    assert clock.sleeps == []


def test_rejection_reserves_nothing() -> None:
    """A refused caller leaves the bucket as it was: the token comes when retry_after said."""
    clock = FakeClock()
    limiter = RateLimiter(2, 1, clock=clock)
    limiter.acquire()
    with pytest.raises(RateLimited) as info:
        limiter.acquire()
    clock.advance(info.value.retry_after)
    assert limiter.try_acquire()


def test_rejection_emits_rate_limit_rejected() -> None:
    """Listeners see the refusal with its retry_after."""
    clock = FakeClock(7.0)
    seen: list[PolicyEvent] = []
    limiter = RateLimiter(1, 1, name="r", clock=clock, listeners=[seen.append])
    limiter.acquire()
    assert not limiter.try_acquire()  # a probe: no event
    with pytest.raises(RateLimited):
        limiter.acquire()
    assert seen == [RateLimitRejected(kind="rate_limiter", name="r", at=7.0, retry_after=1.0)]


def test_deadline_caps_the_wait() -> None:
    """A token due after the current deadline is refused at once."""
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock)
    limiter.acquire()
    with deadline(0.5, clock=clock), pytest.raises(RateLimited):
        limiter.acquire(timeout=None)
    assert clock.sleeps == []
    with deadline(2.0, clock=clock):
        limiter.acquire(timeout=None)
    assert clock.sleeps == [1.0]


def test_waiters_reserve_their_tokens() -> None:
    """A waiting caller's token is reserved: later callers queue behind it, none steal it."""
    clock = FakeClock()
    slept: list[float] = []
    limiter = RateLimiter(2, 1, clock=clock, sleep=slept.append)  # sleeping does not move time
    limiter.acquire()
    limiter.acquire(timeout=None)  # A: reserves the token due at 0.5
    limiter.acquire(timeout=None)  # B: behind A, its token is due at 1.0
    clock.advance(0.75)
    assert not limiter.try_acquire()  # the token that arrived at 0.5 is A's
    assert slept == [0.5, 1.0]
    assert limiter.retry_after() == pytest.approx(0.75)  # the next free token is due at 1.5


def test_interrupted_waiter_gives_its_reservation_back() -> None:
    """If the sleep is interrupted, the reserved tokens return to the bucket."""
    clock = FakeClock()

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    limiter = RateLimiter(1, 1, clock=clock, sleep=interrupted)
    limiter.acquire()
    with pytest.raises(KeyboardInterrupt):
        limiter.acquire(timeout=None)
    clock.advance(1.0)
    assert limiter.try_acquire()


# -- async --------------------------------------------------------------------------------------


def test_aacquire_sleeps_exactly_the_deficit() -> None:
    """aacquire() awaits deficit/rate through the clock's asleep."""
    clock = FakeClock()
    limiter = RateLimiter(10, 1, clock=clock)

    async def main() -> None:
        await limiter.aacquire()
        await limiter.aacquire(timeout=1.0)

    asyncio.run(main())
    assert clock.sleeps == [0.1]


def test_aacquire_beyond_timeout_raises() -> None:
    """aacquire() refuses like acquire() when the wait would be too long."""
    limiter = RateLimiter(1, 1, clock=FakeClock())

    async def main() -> None:
        await limiter.aacquire()
        with pytest.raises(RateLimited, match=r"next token in 1\.000s$"):
            await limiter.aacquire(timeout=0.5)

    asyncio.run(main())


def test_cancelled_waiter_gives_its_reservation_back() -> None:
    """A task cancelled while waiting for a reserved token returns it."""
    clock = FakeClock()
    never = asyncio.Event()

    async def asleep(seconds: float) -> None:
        await never.wait()

    limiter = RateLimiter(1, 1, clock=clock, asleep=asleep)

    async def main() -> None:
        await limiter.aacquire()
        waiter = asyncio.create_task(limiter.aacquire(timeout=None))
        await asyncio.sleep(0)
        assert limiter.available == -1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert limiter.available == 0
    clock.advance(1.0)
    assert limiter.try_acquire()


# -- drivers ------------------------------------------------------------------------------------


def test_call_takes_a_token_per_call() -> None:
    """call() runs the function while tokens last, then raises RateLimited."""
    limiter = RateLimiter(1, 2, clock=FakeClock())
    assert [limiter.call(pow, 2, 3), limiter.call(pow, 2, 4)] == [8, 16]
    with pytest.raises(RateLimited):
        limiter.call(pow, 2, 5)


def test_call_waits_up_to_the_configured_timeout() -> None:
    """The constructor's timeout is how long call() may wait for its token."""
    clock = FakeClock()
    limiter = RateLimiter(2, 1, timeout=1.0, clock=clock)
    limiter.call(int)
    limiter.call(int)
    assert clock.sleeps == [0.5]


def test_decorates_def_and_async_def() -> None:
    """@limiter keeps the function's kind and name and takes a token per call."""
    clock = FakeClock()
    limiter = RateLimiter(1, 2, clock=clock)

    @limiter
    def sync(x: int) -> int:
        """Doc."""
        return x * 2

    @limiter
    async def asy(x: int) -> int:
        return x * 3

    assert (sync(2), sync.__name__, sync.__doc__) == (4, "sync", "Doc.")
    assert asyncio.iscoroutinefunction(asy)
    assert asyncio.run(asy(2)) == 6
    with pytest.raises(RateLimited):
        sync(1)
    clock.advance(1.0)
    assert asyncio.run(asy(1)) == 3


def test_threads_share_the_bucket_exactly() -> None:
    """Eight threads racing at one instant get exactly `burst` tokens between them."""
    limiter = RateLimiter(1, 50, clock=FakeClock())
    granted: list[int] = []
    start = threading.Barrier(8)

    def grab() -> None:
        start.wait()
        granted.append(sum(limiter.try_acquire() for _ in range(20)))

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sum(granted) == 50


# -- the rate bound -----------------------------------------------------------------------------

_ops = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),  # time since the previous operation
        st.sampled_from(["try", "acquire", "interrupted"]),
        st.integers(1, 3),  # tokens (clipped to burst)
        st.one_of(st.none(), st.floats(0.0, 3.0)),  # timeout
    ),
    max_size=40,
)


@given(rate=st.floats(0.5, 20.0), burst=st.integers(1, 6), ops=_ops)
def test_granted_tokens_never_exceed_burst_plus_rate(
    rate: float, burst: int, ops: list[tuple[float, str, int, float | None]]
) -> None:
    """In any interval [t0, t1], tokens granted <= burst + rate * (t1 - t0)."""
    clock = FakeClock()
    waits: list[float] = []
    interrupt = [False]

    def sleep(seconds: float) -> None:  # does not move time, so waiters overlap
        if interrupt[0]:
            raise InterruptedError
        waits.append(seconds)

    limiter = RateLimiter(rate, burst, clock=clock, sleep=sleep)
    grants: list[tuple[float, int]] = []  # (time the tokens may be used, tokens)
    for dt, kind, tokens, timeout in ops:
        clock.advance(dt)
        n = min(tokens, burst)
        if kind == "try":
            if limiter.try_acquire(n):
                grants.append((clock.now, n))
            continue
        interrupt[0] = kind == "interrupted"
        before = len(waits)
        try:
            limiter.acquire(timeout=timeout, tokens=n)
        except (RateLimited, InterruptedError):
            continue
        wait = waits[-1] if len(waits) > before else 0.0
        grants.append((clock.now + wait, n))
    grants.sort()
    for i, (t0, _) in enumerate(grants):
        total = 0
        for t1, n in grants[i:]:
            total += n
            assert total <= burst + rate * (t1 - t0) + 1e-6
