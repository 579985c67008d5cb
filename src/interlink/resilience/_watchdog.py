"""Cancel tasks that outlive their deadline, without a timer per call.

``asyncio.timeout()`` arms one loop timer per call: a ``TimerHandle`` object and a heap push,
then a cancel that leaves the handle in the heap. That costs several microseconds, more than the
rest of a pipeline. Calls whose deadlines fall in the same ``RESOLUTION`` slice share one timer
here: arming is a dict insert, disarming a dict pop, and a deadline fires at most
``RESOLUTION`` seconds late, which is noise next to any timeout worth setting.

Cancellation follows ``asyncio.timeout``'s rules: the task is cancelled, the guarded code turns
*its own* cancellation into ``DeadlineExceeded`` and calls ``task.uncancel()``, and a
cancellation from anywhere else propagates untouched.

Async pipelines on the monotonic clock go one step further and register the *task*, not the
call. Each task gets one ``TaskDeadline`` (a small list) that its pipeline calls rewrite in place:
entering a call writes the deadline into slot ``AT`` and leaving restores it, and the timer is
re-armed lazily. A task's frame sits in a bucket whose timer fires no later than the deadline in
force; when it fires, the frame's *current* deadline decides: passed, cancel the task; later,
re-arm for it; no call in progress, forget the frame. A tight loop of successful calls therefore
arms one timer per ``seconds`` instead of one entry per call, and pays two item writes per call.

A record knows its task, and ``task_of(loop)`` (``asyncio.current_task(loop)``: no
``getpid()``, unlike ``current_task()``) tells whether the record belongs to the task now
running. Timers are set with ``loop.call_later``, so a loop whose clock is not
``time.monotonic`` (uvloop's) serves as well; ``Timeout`` drives all of this.

``task_of`` has one fast path on a private name, behind a feature check: on CPython 3.11
``asyncio.current_task`` is a Python function returning ``asyncio.tasks._current_tasks.get(loop)``,
and calling that dictionary's ``get`` directly saves a Python frame per pipeline call. It is
taken only where ``current_task`` is that pure-Python function and the map a dict; every new
``Watchdog`` confirms it against ``current_task`` and switches to the public function for good
when they disagree (CPython 3.14 keeps the map empty); ``INTERLINK_ASYNCIO_PUBLIC=1`` turns it
off from the start, which the tests use to run the public path.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from interlink.resilience.deadline import (
    _INF,
    AT,
    BASE,
    FIRED,
    FLOOR,
    SLOT,
    TASK,
    THREAD,
    WATCHDOG,
    TaskDeadline,
    inherited,
    install_frame,
)

__all__ = ["RESOLUTION", "Watchdog", "enter_task_deadline", "settle_fired", "watchdog_for"]

TaskOf = Callable[[asyncio.AbstractEventLoop], "asyncio.Task[Any] | None"]


def _fast_task_of() -> TaskOf:
    """``asyncio.current_task`` with a loop, as cheap as this interpreter allows (see above)."""
    if os.environ.get("INTERLINK_ASYNCIO_PUBLIC", "") not in ("", "0"):
        return asyncio.current_task
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(tasks, dict) and inspect.isfunction(asyncio.current_task):
        return tasks.get
    return asyncio.current_task


#: the running task of a loop; switched to ``asyncio.current_task`` if the fast path disagrees
task_of: TaskOf = _fast_task_of()

#: Seconds per shared timer slice: the most a deadline fires late.
RESOLUTION = 0.005
PER_SECOND = 1 / RESOLUTION
#: Frames armed between two sweeps at least (see ``Watchdog.sweep``).
SWEEP_MIN = 256


class Watchdog:
    """One per event loop."""

    __slots__ = (
        "_loop",
        "armed",
        "buckets",
        "expired",
        "frames",
        "seq",
        "sweep_after",
        "thread_id",
        "time",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
        global task_of
        if task_of is not asyncio.current_task and task_of(loop) is not task:
            task_of = asyncio.current_task
        self._loop = loop
        self.thread_id = threading.get_ident()
        self.buckets: dict[int, dict[int, asyncio.Task[object]]] = {}
        self.expired: set[int] = set()
        self.frames: dict[int, list[TaskDeadline]] = {}
        self.armed = 0
        self.sweep_after = SWEEP_MIN
        self.seq = itertools.count(1)
        self.time = loop.time

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

    def arm_frame(self, frame: TaskDeadline, at: float) -> None:
        """Make sure a timer fires for ``frame`` by ``at`` (plus at most ``RESOLUTION``)."""
        slot = int(at * PER_SECOND) + 1
        bucket = self.frames.get(slot)
        if bucket is None:
            bucket = self.frames[slot] = []
            # the slot is on time.monotonic, the loop's clock may not be: schedule by delay
            self._loop.call_later(slot * RESOLUTION - time.monotonic(), self._fire_frames, slot)
        bucket.append(frame)
        frame[SLOT] = slot
        # the earliest deadline this timer still meets: an earlier one must arm its own
        frame[FLOOR] = (slot - 1) * RESOLUTION
        self.armed += 1
        if self.armed > self.sweep_after:
            self.sweep()

    def sweep(self) -> None:
        """Let go of the frames no call is using.

        A frame stays in its bucket until the timer fires, ``seconds`` later, although most
        tasks (one per request) finish long before; the frame refers to its task, so without a
        sweep a busy server would hold every task of the last ``seconds``. Sweeping whenever
        the armed count doubles keeps that to what is in flight, at an amortised constant cost
        per arming. A swept frame forgets its task: should the task call again, it installs a
        new frame.
        """
        kept = 0
        for slot, bucket in self.frames.items():
            keep = []
            for frame in bucket:
                if frame[SLOT] != slot:
                    continue
                if frame[AT] < frame[BASE] and not frame[TASK].done():
                    keep.append(frame)
                    continue
                _release(frame)
            bucket[:] = keep
            kept += len(keep)
        self.armed = 0
        self.sweep_after = max(SWEEP_MIN, 2 * kept)

    def _fire_frames(self, slot: int) -> None:
        bucket = self.frames.pop(slot, None)
        if not bucket:
            return
        now = time.monotonic()
        for frame in bucket:
            if frame[SLOT] != slot:  # re-armed for an earlier deadline since: that timer has it
                continue
            task = frame[TASK]
            if task.done():
                _release(frame)
                continue
            frame[SLOT] = 0
            frame[FLOOR] = _INF
            at = frame[AT]
            if at >= frame[BASE]:  # no pipeline call in progress
                continue
            if at <= now:
                frame[FIRED] = True
                task.cancel()
            else:
                self.arm_frame(frame, at)


def settle_fired(frame: TaskDeadline, prev: float) -> None:
    """The deadline cancelled the task and the call it cut is over (``prev``: the ``AT`` from
    before that call): take the cancellation back, and keep an enclosing call's deadline armed
    (the timer that fired had it)."""
    frame[FIRED] = False
    frame[AT] = prev
    frame[TASK].uncancel()
    if prev < frame[BASE] and frame[FLOOR] > prev:
        frame[WATCHDOG].arm_frame(frame, prev)


def _release(frame: TaskDeadline) -> None:
    """Unarm ``frame`` and drop its task; the fast path's thread check then fails for good."""
    frame[SLOT] = 0
    frame[FLOOR] = _INF
    frame[TASK] = None
    frame[THREAD] = 0


def enter_task_deadline(watchdogs: dict[int, Watchdog], parent: object) -> TaskDeadline | None:
    """Install a ``TaskDeadline`` for the running task, inheriting ``parent`` (the context's
    deadline), and return it; None where the frame cannot serve (no task, or a parent deadline
    on another clock): the caller takes the per-call path then.

    The frame stays in the task's context after the call: later calls in the task find it and
    take the fast path. That changes nothing a reader sees (an idle frame reads as ``parent``),
    and a ``with deadline():`` block around the call still restores its own value on exit.
    """
    task = asyncio.current_task()
    if task is None:
        return None
    base = inherited(parent)
    if base is None:
        return None
    wd = watchdog_for(watchdogs, task)
    return install_frame(base, task, wd.thread_id, wd._loop, wd)


def watchdog_for(cache: dict[int, Watchdog], task: asyncio.Task[Any]) -> Watchdog:
    """The watchdog of the loop running ``task`` (the current task) in this thread, from
    ``cache`` (thread id -> watchdog: one loop runs per thread at a time)."""
    loop = task.get_loop()
    tid = threading.get_ident()
    wd = cache.get(tid)
    if wd is None or wd._loop is not loop:
        wd = cache[tid] = Watchdog(loop, task)
    return wd
