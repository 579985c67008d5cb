"""Waiting for "new work or a timeout" without a task per wait (hot in idle consumers)."""

from __future__ import annotations

import asyncio

__all__ = ["sleep_or_wake"]


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
