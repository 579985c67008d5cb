"""Deadlines: they ride in the context, only shrink when nested, and restore on the way out."""

from __future__ import annotations

import asyncio
import threading

import pytest

from interlink.resilience.deadline import (
    Deadline,
    current_deadline,
    deadline,
    deadline_at,
    expired,
    remaining,
)
from interlink.testing import FakeClock


def test_remaining_is_a_float_that_counts_down_and_never_goes_negative() -> None:
    """remaining() is seconds left as a float, clamped at 0 once the deadline has passed."""
    clock = FakeClock()
    with deadline(2, clock=clock):
        left = remaining()
        assert isinstance(left, float)
        assert left == 2.0
        clock.advance(1.5)
        assert remaining() == 0.5
        assert not expired()
        clock.advance(1.0)
        assert remaining() == 0.0
        assert expired()


def test_three_levels_only_ever_shrink() -> None:
    """Each level keeps the sooner of its own budget and what its caller has left."""
    clock = FakeClock()
    with deadline(3.0, clock=clock):
        clock.advance(1.0)  # 2 s left
        with deadline(5.0, clock=clock):
            assert remaining() == 2.0  # the caller's 2 s, not 5
            with deadline(0.5, clock=clock):
                assert remaining() == 0.5  # stricter: taken
                with deadline(1.0, clock=clock):
                    assert remaining() == 0.5
            assert remaining() == 2.0  # restored on the way out
        assert remaining() == 2.0
    assert remaining() is None


def test_async_nesting_only_shrinks() -> None:
    """``async with`` nests the same way, across awaits."""
    clock = FakeClock()

    async def main() -> list[float | None]:
        seen = []
        async with deadline(1.0, clock=clock):
            async with deadline(10.0, clock=clock):
                await asyncio.sleep(0)
                seen.append(remaining())
            async with deadline(0.25, clock=clock):
                await asyncio.sleep(0)
                seen.append(remaining())
            seen.append(remaining())
        seen.append(remaining())
        return seen

    assert asyncio.run(main()) == [1.0, 0.25, 1.0, None]


def test_a_task_cannot_lengthen_its_parents_deadline() -> None:
    """A task inherits the deadline; its own longer one is shrunk, and the parent's stays."""
    clock = FakeClock()

    async def child() -> float | None:
        async with deadline(60.0, clock=clock):
            return remaining()

    async def main() -> tuple[float | None, float | None]:
        async with deadline(0.5, clock=clock):
            inner = await asyncio.create_task(child())
            return inner, remaining()

    assert asyncio.run(main()) == (0.5, 0.5)


def test_sibling_tasks_do_not_see_each_others_deadlines() -> None:
    """A deadline set inside one task is invisible to a task running beside it."""
    clock = FakeClock()
    seen: dict[str, float | None] = {}

    async def strict() -> None:
        async with deadline(0.1, clock=clock):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen["strict"] = remaining()

    async def relaxed() -> None:
        await asyncio.sleep(0)
        seen["relaxed"] = remaining()

    async def main() -> None:
        await asyncio.gather(strict(), relaxed())

    asyncio.run(main())
    assert seen == {"strict": 0.1, "relaxed": None}


def test_threads_have_their_own_deadlines() -> None:
    """A deadline in one thread does not leak into another."""
    seen: list[float | None] = []
    with deadline(5.0):
        t = threading.Thread(target=lambda: seen.append(remaining()))
        t.start()
        t.join()
    assert seen == [None]


def test_none_keeps_the_current_deadline() -> None:
    """deadline(None) passes an optional budget straight through, inside or outside one."""
    clock = FakeClock()
    with deadline(None) as outside:
        assert outside is None
        assert remaining() is None
    with deadline(1.0, clock=clock), deadline(None, clock=clock) as inner:
        assert inner == Deadline(1.0, clock)
        assert remaining() == 1.0


def test_exit_after_an_error_restores_the_outer_deadline() -> None:
    """An exception leaving the block still puts the caller's deadline back."""
    clock = FakeClock()
    with deadline(2.0, clock=clock):
        with pytest.raises(KeyError), deadline(0.1, clock=clock):
            raise KeyError("boom")
        assert remaining() == 2.0


def test_block_gets_the_deadline_in_force() -> None:
    """``as`` gives the Deadline actually in force, the caller's when that is sooner."""
    clock = FakeClock(50.0)
    with deadline(1.0, clock=clock) as outer:
        assert outer == Deadline(51.0, clock)
        with deadline(4.0, clock=clock) as inner:
            assert inner == outer
    assert current_deadline() is None


def test_deadline_at_installs_an_absolute_deadline_and_shrinks() -> None:
    """An absolute deadline (read from a request) applies, unless the current one is sooner."""
    clock = FakeClock(100.0)
    with deadline_at(Deadline(103.0, clock)):
        assert remaining() == 3.0
        with deadline_at(Deadline(200.0, clock)):
            assert remaining() == 3.0
    with deadline_at(Deadline(90.0, clock)):  # already past: zero left, not negative
        assert remaining() == 0.0
        assert expired()
    assert remaining() is None


def test_deadline_object_reports_time_left() -> None:
    """Deadline.remaining() never goes negative; expired flips at the instant."""
    clock = FakeClock()
    d = Deadline(1.0, clock)
    seen = [(d.remaining(), d.expired)]
    clock.advance(1.0)
    seen.append((d.remaining(), d.expired))
    clock.advance(1.0)
    seen.append((d.remaining(), d.expired))
    assert seen == [(1.0, False), (0.0, True), (0.0, True)]
