"""Bound a call in time, and tell everything it calls how long it has.

``Timeout(seconds)`` installs a deadline ``seconds`` from now (or keeps a sooner one already in
force) for the duration of the call, so every interlink transport underneath sizes its own
timeouts from ``remaining()`` and forwards the rest to the next hop. Then it enforces it:

* **async** (``acall``): by cancellation. The awaited call is cancelled when the deadline
  passes and ``DeadlineExceeded`` is raised. Reliable, because every ``await`` is a point where
  cancellation can land.
* **sync, cooperative** (the default): Python cannot interrupt a running thread, so the deadline
  is enforced where it can be: an already expired deadline fails at once without calling, and the
  code inside (interlink's clients, retries, anything that reads ``remaining()``) stops waiting
  when it runs out. A plain function that ignores the deadline runs to completion and its result
  is returned: like Polly's optimistic timeout, the policy never discards a finished answer.
* **sync, thread** (``strategy="thread"``): the call runs in a worker thread and the caller stops
  waiting at the deadline with ``DeadlineExceeded``. The worker cannot be stopped; it finishes in
  the background and its result is dropped (Polly's pessimistic timeout). Costs a thread hand-off
  per call, so use it only around code that ignores deadlines and must not hold the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, ParamSpec, TypeVar

from interlink.clock import Clock
from interlink.errors import DeadlineExceeded
from interlink.resilience import _validate as v
from interlink.resilience import _watchdog
from interlink.resilience._decorate import Decorating
from interlink.resilience._validate import ReadOnly, described
from interlink.resilience._watchdog import (
    Watchdog,
    enter_task_deadline,
    settle_fired,
    watchdog_for,
)
from interlink.resilience.deadline import (
    _CURRENT,
    AT,
    BASE,
    FIRED,
    FLOOR,
    LOOP,
    TASK,
    THREAD,
    WATCHDOG,
    enter_thread_deadline,
    remaining,
    shrink_to,
)
from interlink.resilience.events import Listener, Observed, TimeoutExpired

__all__ = ["Timeout"]

P = ParamSpec("P")
T = TypeVar("T")

#: ``body(fn, args, kwargs)``: what a timeout runs; a pipeline passes its retry loop here
Body = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], T]

_cv_get = _CURRENT.get
_get_ident = threading.get_ident
_monotonic = time.monotonic


def _plain(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(*args, **kwargs)


class Timeout(Observed, Decorating):
    """Give a call ``seconds`` at most (less if the caller's deadline is sooner); listeners
    get a ``TimeoutExpired`` for every call this timeout ends."""

    __slots__ = (
        "_clock",
        "_executor",
        "_lock",
        "_seconds",
        "_strategy",
        "_watchdogs",
        "name",
    )

    _kind = "timeout"

    def __init__(
        self,
        seconds: float,
        *,
        strategy: Literal["cooperative", "thread"] = "cooperative",
        name: str = "timeout",
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self._seconds = v.positive("seconds", seconds)
        if strategy not in ("cooperative", "thread"):
            raise ValueError(f"'strategy' must be 'cooperative' or 'thread': {strategy!r}")
        self._strategy = strategy
        self._clock = clock
        self.name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._watchdogs: dict[int, Watchdog] = {}
        super().__init__(listeners)

    def expired_error(self, *, started: bool) -> DeadlineExceeded:
        """The error for a call this timeout ended, after telling the listeners."""
        if self._events:
            at = self._clock()
            self._emit(TimeoutExpired, self.name, at, seconds=self._seconds, started=started)
        what = "ran out of time" if started else "had no time left to start"
        return DeadlineExceeded(f"'{self.name}' {what}", self._seconds)

    seconds: ReadOnly[float] = ReadOnly("_seconds", "The configured budget.")
    strategy: ReadOnly[str] = ReadOnly(
        "_strategy", "How the sync front door enforces it: ``cooperative`` or ``thread``."
    )

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()``."""
        return described(self._kind, self.name, self, ("seconds", "strategy"))

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` under the deadline; see the module docstring for what "enforce" means."""
        result: T = self.run(_plain, fn, args, kwargs)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` under the deadline, cancelling it when the deadline passes."""
        result: T = await self.arun(_plain, fn, args, kwargs)
        return result

    def run(
        self, body: Body[T], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        """``body(fn, args, kwargs)`` under the deadline: ``call``'s driver, and ``Pipeline``'s.

        On the monotonic clock the deadline goes into this thread's deadline record (see
        ``deadline.py``): a slot write and a restore instead of setting the context variable.
        """
        if self._strategy == "cooperative" and self._clock is _monotonic:
            frame = _cv_get()
            if not (frame.__class__ is list and frame[THREAD] == _get_ident()):
                frame = enter_thread_deadline(frame)
            if frame is not None:
                now = _monotonic()
                at = now + self._seconds
                prev = frame[AT]
                if prev > at:
                    frame[AT] = at
                elif prev <= now:
                    raise self.expired_error(started=False)
                try:
                    return body(fn, args, kwargs)
                finally:
                    frame[AT] = prev
        token = shrink_to(self._seconds, self._clock)
        try:
            pair = _CURRENT.get()
            if pair is not None and pair[1]() >= pair[0]:
                raise self.expired_error(started=False)
            if self._strategy == "thread":
                return self._in_thread(body, fn, args, kwargs)
            return body(fn, args, kwargs)
        finally:
            _CURRENT.reset(token)

    async def arun(
        self,
        body: Body[Awaitable[T]],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        """Await ``body(fn, args, kwargs)`` under the deadline, cancelling the task when it
        passes: ``acall``'s driver, and ``Pipeline``'s.

        On the monotonic clock the deadline goes into the task's deadline record, which the
        loop's ``Watchdog`` cancels when it is due (see ``_watchdog.py``); otherwise the call
        gets a watchdog ticket of its own.
        """
        if self._clock is not _monotonic:
            return await self._arun_ticket(body, fn, args, kwargs)
        frame = _cv_get()
        if not (
            frame.__class__ is list
            and frame[THREAD] == _get_ident()
            and frame[TASK] is _watchdog.task_of(frame[LOOP])
        ):
            frame = enter_task_deadline(self._watchdogs, frame)
            if frame is None:
                return await self._arun_ticket(body, fn, args, kwargs)
        now = _monotonic()
        at = now + self._seconds
        prev = frame[AT]
        if prev > at:
            frame[AT] = at
            if frame[FLOOR] > at:
                frame[WATCHDOG].arm_frame(frame, at)
        elif prev <= now:
            raise self.expired_error(started=False)
        elif prev == frame[BASE]:
            # the inherited deadline is sooner, and nothing enforces it yet: this call does,
            # marking itself in progress by holding AT just below BASE
            frame[AT] = at = math.nextafter(prev, -math.inf)
            if frame[FLOOR] > at:
                frame[WATCHDOG].arm_frame(frame, at)
        try:
            result = await body(fn, args, kwargs)
        except asyncio.CancelledError:
            if frame[FIRED]:
                settle_fired(frame, prev)
                raise self.expired_error(started=True) from None
            raise
        except BaseException:
            if frame[FIRED]:
                settle_fired(frame, prev)
            raise
        finally:
            frame[AT] = prev
        if frame[FIRED]:
            settle_fired(frame, prev)
        return result

    async def _arun_ticket(
        self,
        body: Body[Awaitable[T]],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        """The per-call path: the context variable set, and a watchdog ticket for this call."""
        token = shrink_to(self._seconds, self._clock)
        try:
            left = remaining()
            if left is None or left <= 0.0:
                raise self.expired_error(started=False)
            task = asyncio.current_task()
            if task is None:  # a coroutine driven by hand, outside any task: nothing to cancel
                return await body(fn, args, kwargs)
            wd = watchdog_for(self._watchdogs, task)
            ticket = wd.arm(left, task)
            try:
                result = await body(fn, args, kwargs)
            except asyncio.CancelledError:
                if wd.disarm(ticket):
                    task.uncancel()
                    raise self.expired_error(started=True) from None
                raise
            except BaseException:
                if wd.disarm(ticket):
                    task.uncancel()
                raise
            if wd.disarm(ticket):
                task.uncancel()
            return result
        finally:
            _CURRENT.reset(token)

    def _in_thread(
        self, body: Body[T], fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]
    ) -> T:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    thread_name_prefix=f"interlink-timeout-{self.name}"
                )
            executor = self._executor
        left = remaining()
        # the worker must see this call's deadline (and correlation id): run it in a copy of
        # the caller's context
        future = executor.submit(contextvars.copy_context().run, body, fn, args, kwargs)
        try:
            return future.result(timeout=left)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise self.expired_error(started=True) from exc

    def close(self) -> None:
        """Release the worker threads of ``strategy="thread"`` (abandoned calls finish first)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
