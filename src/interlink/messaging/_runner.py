"""Run a coroutine inside the current task, in a context of its own, and say when it first
waits.

This is what ``asyncio.Task`` does for a coroutine (step it in its context, hand what it yields
to the event loop, throw cancellation into it), minus the task: no allocation, no scheduling,
no wake-up when the coroutine finishes without waiting, which is how most message handlers
finish. The consumer uses the ``waiting`` hook to let another runner fetch while this one is
blocked in I/O. The coroutine stays in the calling task from start to end, so
``asyncio.current_task()``, ``asyncio.timeout()`` and cancellation behave as if it had been
awaited directly.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from typing import Any

__all__ = ["drive"]


@types.coroutine
def _wait(yielded: Any) -> Generator[Any, None, None]:
    # Hand what the driven coroutine yielded (a future, or None for a bare yield) to the task
    # running us; the task resumes us when it is done, or throws into us (cancellation).
    yield yielded


async def drive(
    coro: Coroutine[Any, Any, None], context: Context, waiting: Callable[[], None]
) -> None:
    """Await ``coro`` with each of its steps run in ``context``; ``waiting()`` is called
    once, the first time it suspends."""
    run, send, throw = context.run, coro.send, coro.throw
    try:
        yielded = run(send, None)
    except StopIteration:
        return
    waiting()
    while True:
        try:
            await _wait(yielded)
        except GeneratorExit:  # the calling task is being closed: close the coroutine too
            coro.close()
            raise
        except BaseException as exc:  # cancellation (or another error) thrown into the task
            try:
                yielded = run(throw, exc)
            except StopIteration:
                return
            continue
        try:
            yielded = run(send, None)
        except StopIteration:
            return
