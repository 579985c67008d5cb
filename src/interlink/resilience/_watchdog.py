"""Cancel tasks that outlive their deadline, without a timer per call.

``asyncio.timeout()`` arms one loop timer per call: a ``TimerHandle`` object and a heap push,
then a cancel that leaves the handle in the heap. That costs several microseconds, more than the
rest of a pipeline. Calls whose deadlines fall in the same ``RESOLUTION`` slice share one timer
here: arming is a dict insert, disarming a dict delete, and a deadline fires at most
``RESOLUTION`` seconds late, which is noise next to any timeout worth setting.

Cancellation follows ``asyncio.timeout``'s rules: the task is cancelled, the guarded code turns
*its own* cancellation into ``DeadlineExceeded`` (``expired``) and calls ``task.uncancel()``, and
a cancellation from anywhere else propagates untouched.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time

__all__ = ["RESOLUTION", "Watchdog"]

#: Seconds per shared timer slice: the most a deadline fires late.
RESOLUTION = 0.005
_PER_SECOND = 1 / RESOLUTION


class Watchdog:
    """One per event loop (held by the Timeout that uses it)."""

    __slots__ = ("_buckets", "_expired", "_loop", "_seq", "_time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # BaseEventLoop.time() is time.monotonic() behind a Python method call: skip the call
        self._time = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self._buckets: dict[int, dict[int, asyncio.Task[object]]] = {}
        self._expired: set[int] = set()
        self._seq = itertools.count(1).__next__

    def arm(self, seconds: float, task: asyncio.Task[object]) -> tuple[int, int]:
        """Cancel ``task`` ``seconds`` from now unless ``disarm``ed first; returns the ticket."""
        slot = math.ceil((self._time() + seconds) * _PER_SECOND)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            self._loop.call_at(slot * RESOLUTION, self._fire, slot)
        seq = self._seq()
        bucket[seq] = task
        return slot, seq

    def disarm(self, ticket: tuple[int, int]) -> bool:
        """Forget the ticket; True when its deadline had already fired (the task was cancelled
        by us, and the caller must ``uncancel`` it)."""
        slot, seq = ticket
        bucket = self._buckets.get(slot)
        if bucket is not None and bucket.pop(seq, None) is not None:
            return False
        if seq in self._expired:
            self._expired.discard(seq)
            return True
        return False

    def _fire(self, slot: int) -> None:
        bucket = self._buckets.pop(slot, None)
        if not bucket:
            return
        for seq, task in bucket.items():
            if not task.done():
                self._expired.add(seq)
                task.cancel()
