"""Driving a coroutine inside the current task, in a context of its own (the consumer's
runners use it instead of a task per message)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from interlink.messaging._runner import drive

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_runner_var", default="outer")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 5))


def test_a_coroutine_that_never_waits_finishes_without_the_hook() -> None:
    """No suspension: the hook is not called and the coroutine's effects are there."""
    calls: list[str] = []
    done: list[int] = []

    async def quick() -> None:
        done.append(1)

    run(drive(quick(), contextvars.copy_context(), lambda: calls.append("waiting")))
    assert (done, calls) == ([1], [])


def test_the_hook_is_called_once_at_the_first_wait() -> None:
    """A coroutine that waits several times calls the hook once, then finishes normally."""
    calls: list[str] = []
    steps: list[int] = []

    async def slow() -> None:
        for i in range(3):
            await asyncio.sleep(0.001)
            steps.append(i)

    run(drive(slow(), contextvars.copy_context(), lambda: calls.append("waiting")))
    assert (steps, calls) == ([0, 1, 2], ["waiting"])


def test_every_step_runs_in_the_given_context() -> None:
    """What the coroutine sets stays in its context, before and after it waits."""
    seen: list[str] = []

    async def body() -> None:
        VAR.set("inner")
        await asyncio.sleep(0)
        seen.append(VAR.get())

    async def main() -> str:
        context = contextvars.copy_context()
        await drive(body(), context, lambda: None)
        assert context[VAR] == "inner"
        return VAR.get()

    assert run(main()) == "outer"
    assert seen == ["inner"]


def test_errors_propagate_to_the_caller() -> None:
    """An exception raised after a wait reaches whoever awaits drive()."""

    async def failing() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run(drive(failing(), contextvars.copy_context(), lambda: None))


def test_cancelling_the_task_cancels_the_coroutine_inside_it() -> None:
    """Cancellation reaches the driven coroutine, which can clean up before it ends."""
    cleaned: list[bool] = []

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    async def main() -> None:
        task = asyncio.create_task(drive(waits_forever(), contextvars.copy_context(), lambda: None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert cleaned == [True]


def test_timeouts_and_current_task_see_the_calling_task() -> None:
    """asyncio.timeout() inside the coroutine cancels only it, as TimeoutError, and
    current_task() is the task that drives it."""
    outcome: list[object] = []

    async def body(owner: asyncio.Task[Any] | None) -> None:
        outcome.append(asyncio.current_task() is owner)
        try:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timed out")
        await asyncio.sleep(0)
        outcome.append("after")

    async def main() -> None:
        await drive(body(asyncio.current_task()), contextvars.copy_context(), lambda: None)
        outcome.append(asyncio.current_task().cancelling())  # type: ignore[union-attr]

    run(main())
    assert outcome == [True, "timed out", "after", 0]
