"""Cancel tasks that outlive their deadline, without a timer per call.

``asyncio.timeout()`` arms one loop timer per call: a ``TimerHandle`` object and a heap push,
then a cancel that leaves the handle in the heap. That costs several microseconds, more than the
rest of a pipeline. Calls whose deadlines fall in the same ``RESOLUTION`` slice share one timer
here: arming is a dict insert, disarming a dict pop, and a deadline fires at most
``RESOLUTION`` seconds late, which is noise next to any timeout worth setting.

Cancellation follows ``asyncio.timeout``'s rules: the task is cancelled, the guarded code turns
*its own* cancellation into ``DeadlineExceeded`` and calls ``task.uncancel()``, and a
cancellation from anywhere else propagates untouched.

The generated pipeline (``_pipeline_code``) inlines ``arm``/``disarm``; keep the attribute
names in step with it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time

__all__ = ["RESOLUTION", "Watchdog", "watchdog_for"]

#: Seconds per shared timer slice: the most a deadline fires late.
RESOLUTION = 0.005
PER_SECOND = 1 / RESOLUTION


class Watchdog:
    """One per event loop."""

    __slots__ = ("_loop", "buckets", "expired", "seq", "thread_id", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.thread_id = threading.get_ident()
        self.buckets: dict[int, dict[int, asyncio.Task[object]]] = {}
        self.expired: set[int] = set()
        self.seq = itertools.count(1)
        # BaseEventLoop.time() is time.monotonic() behind a Python method call: skip the call
        self.time = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop whose tasks this watchdog cancels."""
        return self._loop

    def current(self) -> bool:
        """Is this watchdog's loop the one running in the calling thread?"""
        return (
            self.thread_id == threading.get_ident()
            and getattr(self._loop, "_thread_id", None) == self.thread_id
        )

    def new_bucket(self, slot: int) -> dict[int, asyncio.Task[object]]:
        """The bucket for ``slot``, with its one timer."""
        bucket = self.buckets.get(slot)
        if bucket is None:
            bucket = self.buckets[slot] = {}
            self._loop.call_at(slot * RESOLUTION, self._fire, slot)
        return bucket

    def arm(self, seconds: float, task: asyncio.Task[object]) -> tuple[dict[int, object], int]:
        """Cancel ``task`` ``seconds`` from now unless disarmed first; returns the ticket."""
        slot = math.ceil((self.time() + seconds) * PER_SECOND)
        bucket = self.buckets.get(slot) or self.new_bucket(slot)
        seq = next(self.seq)
        bucket[seq] = task
        return bucket, seq  # type: ignore[return-value]

    def disarm(self, ticket: tuple[dict[int, object], int]) -> bool:
        """Forget the ticket; True when its deadline had fired (the task was cancelled by us,
        and the caller must ``uncancel`` it)."""
        bucket, seq = ticket
        return bucket.pop(seq, None) is None and self.fired(seq)

    def fired(self, seq: int) -> bool:
        """Did the deadline of ``seq`` cancel its task? (Asked once: the answer is consumed.)"""
        if seq in self.expired:
            self.expired.discard(seq)
            return True
        return False

    def _fire(self, slot: int) -> None:
        bucket = self.buckets.pop(slot, None)
        if not bucket:
            return
        for seq, task in bucket.items():
            if not task.done():
                self.expired.add(seq)
                task.cancel()
        bucket.clear()  # a disarm that finds its entry gone knows the deadline fired


def watchdog_for(cache: dict[int, Watchdog]) -> Watchdog:
    """The watchdog of the loop running in this thread, from ``cache`` (thread id -> watchdog).

    ``asyncio.get_running_loop()`` calls ``getpid()`` on every use in CPython 3.11; a cached
    watchdog is checked against the thread instead (one loop runs per thread at a time).
    """
    tid = threading.get_ident()
    wd = cache.get(tid)
    if wd is not None and getattr(wd._loop, "_thread_id", None) == tid:
        return wd
    wd = cache[tid] = Watchdog(asyncio.get_running_loop())
    return wd
