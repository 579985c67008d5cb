"""Timeout: the deadline it installs and the three ways it is enforced."""

from __future__ import annotations

import asyncio
import time

import pytest

from interlink.errors import DeadlineExceeded, InterlinkError
from interlink.resilience.deadline import current_deadline, deadline, expired, remaining
from interlink.resilience.timeout import Timeout
from interlink.testing import FakeClock


def test_no_deadline_outside() -> None:
    """Outside any deadline remaining() is None."""
    assert remaining() is None
    assert current_deadline() is None
    assert not expired()


def test_nested_deadlines_only_shrink() -> None:
    """An inner deadline longer than the outer one keeps the outer one."""
    clock = FakeClock()
    with deadline(1.0, clock=clock):
        with deadline(5.0, clock=clock):
            assert remaining() == 1.0
        with deadline(0.25, clock=clock):
            assert remaining() == 0.25
        clock.advance(0.4)
        assert remaining() == pytest.approx(0.6)
    assert remaining() is None


def test_deadline_on_another_clock_compares_time_left() -> None:
    """Mixing clocks compares seconds left, never raw readings."""
    fake = FakeClock(10_000.0)
    with deadline(0.5, clock=fake), deadline(30.0):
        left = remaining()
        assert left is not None
        assert left == pytest.approx(0.5)


def test_async_deadline_flows_into_tasks() -> None:
    """A task started inside a deadline sees it."""

    async def main() -> float | None:
        async with deadline(3.0):
            return await asyncio.create_task(asyncio.sleep(0, remaining()))

    left = asyncio.run(main())
    assert left is not None
    assert 2.9 < left <= 3.0


def test_sync_cooperative_returns_a_late_answer() -> None:
    """Cooperative: a function that ignores the deadline still returns its answer."""
    clock = FakeClock()
    t = Timeout(1.0, clock=clock)

    def slow() -> str:
        clock.advance(5.0)
        return "late"

    assert t.call(slow) == "late"


def test_sync_cooperative_exposes_the_deadline() -> None:
    """Inside the call, the deadline is visible to whatever reads remaining()."""
    clock = FakeClock()
    t = Timeout(1.5, clock=clock)
    assert t.call(remaining) == 1.5


def test_sync_expired_fails_without_calling() -> None:
    """An already expired deadline raises DeadlineExceeded before calling."""
    clock = FakeClock()
    called = []
    with deadline(0.1, clock=clock):
        clock.advance(0.2)
        with pytest.raises(DeadlineExceeded) as info:
            Timeout(1.0, clock=clock).call(lambda: called.append(1))
    assert called == []
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, InterlinkError)
    assert "had no time left to start" in str(info.value)


def test_sync_thread_strategy_stops_waiting() -> None:
    """strategy='thread' gives up at the deadline while the worker finishes on its own."""
    t = Timeout(0.05, strategy="thread")
    start = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="ran out of time"):
        t.call(time.sleep, 0.5)
    assert time.perf_counter() - start < 0.3
    assert t.call(lambda: remaining() is not None) is True
    t.close()


def test_async_cancels_at_the_deadline() -> None:
    """acall cancels the awaited call when the time is up."""
    t = Timeout(0.05)

    async def main() -> None:
        with pytest.raises(DeadlineExceeded, match=r"budget 0\.050s"):
            await t.acall(asyncio.sleep, 5)

    start = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - start < 1.0


def test_decorators() -> None:
    """@Timeout works on def and async def."""
    t = Timeout(1.0)

    @t
    def f() -> float | None:
        return remaining()

    @t
    async def g() -> float | None:
        return remaining()

    assert (f() or 0) > 0.9
    assert (asyncio.run(g()) or 0) > 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seconds": 0}, "'seconds' must be a finite number > 0: 0"),
        ({"seconds": -1.0}, "'seconds' must be a finite number > 0: -1.0"),
        ({"seconds": 1, "strategy": "kill"}, "'strategy' must be 'cooperative' or 'thread'"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    """Bad settings name the parameter and the value."""
    with pytest.raises(ValueError) as info:
        Timeout(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_deadline_refuses_negative_seconds() -> None:
    """deadline(-1) is a configuration error, not an expired deadline."""
    with pytest.raises(ValueError, match="'seconds' must be a finite number >= 0: -1"):
        deadline(-1)


def test_every_way_of_running_out_emits_timeout_expired() -> None:
    """Refused at the start, cut off in a thread, cancelled in a task, cut off in a pipeline:
    each reaches listeners as TimeoutExpired with the budget."""
    from interlink.resilience.events import PolicyEvent, TimeoutExpired
    from interlink.resilience.pipeline import Pipeline

    seen: list[PolicyEvent] = []
    clock = FakeClock()
    with deadline(0.1, clock=clock):
        clock.advance(0.2)
        with pytest.raises(DeadlineExceeded):
            Timeout(1.0, clock=clock, name="late", listeners=[seen.append]).call(int)
    threaded = Timeout(0.02, strategy="thread", name="thread", listeners=[seen.append])
    with pytest.raises(DeadlineExceeded):
        threaded.call(time.sleep, 0.2)
    threaded.close()
    with pytest.raises(DeadlineExceeded):
        asyncio.run(Timeout(0.02, name="task", listeners=[seen.append]).acall(asyncio.sleep, 5))
    piped = Pipeline(Timeout(0.02, name="piped", listeners=[seen.append]))
    with pytest.raises(DeadlineExceeded):
        asyncio.run(piped.acall(asyncio.sleep, 5))
    assert [(e.name, e.started) for e in seen if isinstance(e, TimeoutExpired)] == [
        ("late", False),
        ("thread", True),
        ("task", True),
        ("piped", True),
    ]
