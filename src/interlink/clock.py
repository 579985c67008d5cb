"""Where policies get time from.

A clock is any zero-argument callable returning seconds as a float (``time.monotonic`` by
default). Policies take it as an argument instead of reading a global, so tests drive time with
``interlink.testing.FakeClock`` and never sleep. A clock object may also carry ``sleep`` and
``asleep`` methods; policies that wait use them when no ``sleep`` is passed explicitly, so one
``clock=fake`` argument makes a whole policy deterministic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["AsyncSleep", "Clock", "Sleep", "async_sleep_of", "sleep_of"]

Clock = Callable[[], float]
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


def sleep_of(clock: Clock, sleep: Sleep | None) -> Sleep:
    """The blocking sleep to use: the explicit one, the clock's own, or ``time.sleep``."""
    if sleep is not None:
        return sleep
    own: Sleep | None = getattr(clock, "sleep", None)
    return own if own is not None else time.sleep


def async_sleep_of(clock: Clock, asleep: AsyncSleep | None) -> AsyncSleep:
    """The awaitable sleep to use: the explicit one, the clock's own, or ``asyncio.sleep``."""
    if asleep is not None:
        return asleep
    own: AsyncSleep | None = getattr(clock, "asleep", None)
    return own if own is not None else asyncio.sleep
