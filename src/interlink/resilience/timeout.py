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
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from interlink.clock import Clock
from interlink.errors import DeadlineExceeded
from interlink.resilience import _validate as v
from interlink.resilience._watchdog import Watchdog, watchdog_for
from interlink.resilience.deadline import _CURRENT, remaining, shrink_to
from interlink.resilience.events import Emitter, Listener, TimeoutExpired

__all__ = ["Timeout"]

P = ParamSpec("P")
T = TypeVar("T")


class Timeout:
    """Give a call ``seconds`` at most (less if the caller's deadline is sooner)."""

    __slots__ = (
        "_clock",
        "_events",
        "_executor",
        "_lock",
        "_seconds",
        "_strategy",
        "_watchdogs",
        "name",
    )

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
        self._events = Emitter(listeners)

    def add_listener(self, listener: Listener) -> None:
        """Receive a ``TimeoutExpired`` for every call this timeout ends."""
        self._events.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop receiving events; a listener that was never added is ignored."""
        self._events.remove(listener)

    def expired_error(self, *, started: bool) -> DeadlineExceeded:
        """The error for a call this timeout ended, after telling the listeners (also used by
        the pipeline's generated drivers)."""
        if self._events:
            self._events.emit(
                TimeoutExpired(
                    kind="timeout",
                    name=self.name,
                    at=self._clock(),
                    seconds=self._seconds,
                    started=started,
                )
            )
        what = "ran out of time" if started else "had no time left to start"
        return DeadlineExceeded(f"'{self.name}' {what}", self._seconds)

    def watchdog(self) -> Watchdog:
        """The deadline watchdog of the event loop running in this thread."""
        return watchdog_for(self._watchdogs)

    @property
    def seconds(self) -> float:
        """The configured budget."""
        return self._seconds

    @property
    def strategy(self) -> str:
        """How the sync front door enforces it: ``cooperative`` or ``thread``."""
        return self._strategy

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()``."""
        return {
            "policy": "timeout",
            "name": self.name,
            "seconds": self._seconds,
            "strategy": self._strategy,
        }

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` under the deadline; see the module docstring for what "enforce" means."""
        clock = self._clock
        token = shrink_to(self._seconds, clock)
        try:
            pair = _CURRENT.get()
            if pair is not None and pair[1]() >= pair[0]:
                raise self.expired_error(started=False)
            if self._strategy == "thread":
                return self._in_thread(fn, args, kwargs)
            return fn(*args, **kwargs)
        finally:
            _CURRENT.reset(token)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn`` under the deadline, cancelling it when the deadline passes."""
        token = shrink_to(self._seconds, self._clock)
        try:
            left = remaining()
            if left is None or left <= 0.0:
                raise self.expired_error(started=False)
            task = asyncio.current_task()
            if task is None:  # a coroutine driven by hand, outside any task: nothing to cancel
                return await fn(*args, **kwargs)
            wd = self.watchdog()
            ticket = wd.arm(left, task)
            try:
                result = await fn(*args, **kwargs)
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

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a ``def`` or an ``async def``."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def _in_thread(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    thread_name_prefix=f"interlink-timeout-{self.name}"
                )
            executor = self._executor
        left = remaining()
        # the worker must see this call's deadline (and correlation id): run it in a copy of
        # the caller's context
        future = executor.submit(contextvars.copy_context().run, fn, *args, **kwargs)
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
