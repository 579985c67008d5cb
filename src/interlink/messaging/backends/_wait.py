"""Waiting for "new work or a timeout" without a task per wait (hot in idle consumers):
``sleep_or_wake`` on an event; ``Signal`` wakes one waiting subscription."""

from __future__ import annotations

import asyncio

__all__ = ["Signal", "sleep_or_wake"]


async def sleep_or_wake(event: asyncio.Event, seconds: float | None) -> None:
    """Return when ``event`` is set or after ``seconds`` (never, for None)."""
    if event.is_set():
        return
    if seconds is None:
        await event.wait()
        return
    handle = asyncio.get_running_loop().call_later(seconds, event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()


class Signal:
    """Wakes one waiting subscription (a message arrived, the connection came back)."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, within: float | None = None) -> None:
        """Return when woken, or after ``within`` seconds (never, for None)."""
        future = self._future = asyncio.get_running_loop().create_future()
        try:
            if within is None:  # (a consumer between deliveries: no timeout to arm)
                await future
                return
            async with asyncio.timeout(within):
                await future
        except TimeoutError:
            pass
        finally:
            self._future = None
