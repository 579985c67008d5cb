"""A clock that moves only when told to, so time-dependent tests never sleep."""

from __future__ import annotations

import asyncio
import threading

__all__ = ["FakeClock"]


class FakeClock:
    """A callable clock for policies' ``clock=`` argument.

    ``clock()`` reads the time; ``advance(s)`` moves it. ``sleep``/``asleep`` advance the clock
    by the requested amount at once and record it in ``sleeps``, so a retry loop that would wait
    seconds finishes instantly and the test can assert the delays it asked for. ``asleep`` yields
    to the event loop once, as a real sleep would, so other tasks get to run.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current reading."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (must be >= 0); returns the new reading."""
        if seconds < 0:
            raise ValueError(f"'seconds' must be >= 0: {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance by it, without waiting."""
        self.sleeps.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """Record the sleep, advance by it, and yield to the loop once."""
        self.sleep(seconds)
        await asyncio.sleep(0)
