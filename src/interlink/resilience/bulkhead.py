"""Bulkhead: cap how many calls to one dependency run at once, so a slow peer cannot take every
thread or task of the caller with it.

Free slots are tokens in a ``collections.deque``: entering is ``pop()`` and leaving is
``append()``, both atomic under the GIL, so a call that finds a free slot takes no lock at all.
The lock is only taken to queue (no slot free) and by ``leave()`` when somebody is queued.

Queue rules: at most ``max_queue`` callers wait, each for at most ``queue_timeout`` seconds,
further capped by the ``timeout`` given to ``enter``/``aenter`` and by the current deadline
(``interlink.resilience.deadline``). With a queue, ``queue_timeout`` 0 (the default) or ``None``
means no limit of its own: a queued caller waits for a slot or for its deadline, like Polly's
bulkhead queue. A ``queue_timeout`` without a queue is refused: nobody would ever wait.

A freed slot is handed straight to the longest-waiting caller. Only a caller that arrives in the
instant between ``leave()`` returning the token and the hand-over can take it first; that short
barging window is the price of the lock-free fast path. Queue waits run on real time (a thread
lock's timeout, the event loop's timer); ``clock`` only stamps events.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from interlink.clock import Clock
from interlink.errors import BulkheadFull
from interlink.resilience._decorate import through
from interlink.resilience._validate import at_least, described, non_negative, positive_int
from interlink.resilience.deadline import remaining
from interlink.resilience.events import BulkheadRejected, Listener, Observed

__all__ = ["Bulkhead"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class _ThreadWaiter:
    """A queued thread: blocks on a lock that ``grant`` releases."""

    __slots__ = ("_lock", "granted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.granted = False

    def grant(self) -> bool:
        self.granted = True
        self._lock.release()
        return True

    def wait(self, timeout: float | None) -> bool:
        if timeout is None:
            return self._lock.acquire()
        return self._lock.acquire(timeout=min(timeout, threading.TIMEOUT_MAX))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _TaskWaiter:
    """A queued task: awaits a future of its own loop, resolved thread-safely by ``grant``."""

    __slots__ = ("_loop", "future", "granted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.granted = False

    def grant(self) -> bool:
        if self.future.done():  # cancelled: its task is leaving, give the slot to the next one
            return False
        self.granted = True
        try:
            self._loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop is closed: nobody is left to take the slot
            self.granted = False
            return False
        return True


_Waiter = _ThreadWaiter | _TaskWaiter
W = TypeVar("W", _ThreadWaiter, _TaskWaiter)


class Bulkhead(Observed):
    """At most ``max_concurrent`` calls at once; up to ``max_queue`` more wait for a slot.

    Use ``call``/``acall``, ``@bulkhead`` on a def or async def, ``with``/``async with``, or the
    primitives ``try_enter``/``enter``/``aenter`` + ``leave`` (what the pipeline uses). Threads
    and tasks, even of several event loops, can share one bulkhead. A rejected caller gets
    ``BulkheadFull`` and listeners get ``BulkheadRejected``; ``try_enter`` just returns False.
    """

    __slots__ = (
        "_clock",
        "_free",
        "_lock",
        "_waiters",
        "max_concurrent",
        "max_queue",
        "name",
        "queue_timeout",
    )

    _kind = "bulkhead"

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int = 0,
        queue_timeout: float | None = 0.0,
        *,
        name: str = "bulkhead",
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.max_concurrent = positive_int("max_concurrent", max_concurrent)
        self.max_queue = at_least("max_queue", max_queue, 0)
        if queue_timeout is not None:
            queue_timeout = non_negative("queue_timeout", queue_timeout)
        if self.max_queue and queue_timeout == 0.0:
            queue_timeout = None  # a queue whose callers may not wait is no queue: see above
        if not self.max_queue and queue_timeout != 0.0:
            raise ValueError(
                f"'queue_timeout' must be 0 when 'max_queue' is 0 (nobody waits): {queue_timeout!r}"
            )
        self.queue_timeout = queue_timeout
        self.name = name
        self._clock = clock
        super().__init__(listeners)
        # a free slot is an item in _free: taking and giving one back are single deque calls
        self._free: deque[None] = deque([None] * max_concurrent)
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    # -- state -------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Calls holding a slot right now."""
        return self.max_concurrent - len(self._free)

    @property
    def available(self) -> int:
        """Free slots right now."""
        return len(self._free)

    @property
    def queued(self) -> int:
        """Callers waiting for a slot right now."""
        return len(self._waiters)

    def describe(self) -> dict[str, object]:
        """The configuration, for tests and the pipeline's ``describe()``."""
        return described(
            self._kind, self.name, self, ("max_concurrent", "max_queue", "queue_timeout")
        )

    def __repr__(self) -> str:
        return (
            f"Bulkhead({self.name!r}, running={self.running}/{self.max_concurrent}, "
            f"queued={self.queued}/{self.max_queue})"
        )

    # -- primitives --------------------------------------------------------------------------

    def try_enter(self) -> bool:
        """Take a free slot if there is one, never waiting; False (and no event) otherwise."""
        try:
            self._free.pop()
        except IndexError:
            return False
        return True

    def enter(self, timeout: float | None = None) -> None:
        """Take a slot, queueing per the settings; ``timeout`` can only shorten the wait.

        Raises ``BulkheadFull`` when the queue is full or the wait runs out.
        """
        try:
            self._free.pop()
        except IndexError:
            self._enter_slow(timeout)

    async def aenter(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - caps the queue wait
        """``enter`` for tasks: waits without blocking the event loop."""
        try:
            self._free.pop()
        except IndexError:
            await self._aenter_slow(timeout)

    def leave(self) -> None:
        """Give the slot back (once per successful enter), handing it to a waiter if any."""
        self._free.append(None)
        if self._waiters:  # after the append: a waiter that registered meanwhile is seen here
            self._wake()

    # -- drivers -----------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` in a slot."""
        free = self._free  # a local: method calls on it are the cheapest CPython has
        try:
            free.pop()
        except IndexError:
            self._enter_slow(None)
        try:
            return fn(*args, **kwargs)
        finally:
            free.append(None)
            if self._waiters:
                self._wake()

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` in a slot."""
        free = self._free
        try:
            free.pop()
        except IndexError:
            await self._aenter_slow(None)
        try:
            return await fn(*args, **kwargs)
        finally:
            free.append(None)
            if self._waiters:
                self._wake()

    def __call__(self, fn: F) -> F:
        """Decorate a def or an async def so that every call runs in a slot."""
        return through(fn, self.call, self.acall)

    def __enter__(self) -> Bulkhead:
        try:  # enter(), inlined
            self._free.pop()
        except IndexError:
            self._enter_slow(None)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._free.append(None)  # leave(), inlined
        if self._waiters:
            self._wake()

    async def __aenter__(self) -> Bulkhead:
        await self.aenter()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._free.append(None)
        if self._waiters:
            self._wake()

    # -- slow paths --------------------------------------------------------------------------

    def _wake(self) -> None:
        # Hand free slots to waiters in arrival order. Taking the token out of the deque before
        # granting means a slot is never owned twice; a waiter that is gone puts it back.
        with self._lock:
            while self._waiters:
                try:
                    self._free.pop()
                except IndexError:
                    return
                if not self._waiters.popleft().grant():
                    self._free.append(None)

    def _budget(self, timeout: float | None) -> float | None:
        wait = self.queue_timeout
        if timeout is not None and (wait is None or timeout < wait):
            wait = timeout
        left = remaining()
        if left is not None and (wait is None or left < wait):
            wait = left
        return wait

    def _register(self, wait: float | None, waiter: Callable[[], W]) -> W | None:
        """Queue a waiter; None when a slot turned up meanwhile. Raises when it may not wait."""
        with self._lock:
            try:
                self._free.pop()
            except IndexError:
                pass
            else:
                return None
            full = (wait is not None and wait <= 0.0) or len(self._waiters) >= self.max_queue
            if not full:
                w = waiter()
                self._waiters.append(w)
                # Register first, then look again: a leave() whose append came after our pop
                # above sees us in _waiters, one whose append came before is seen by this pop.
                try:
                    self._free.pop()
                except IndexError:
                    return w
                self._waiters.pop()  # still ours: appends happen under the lock we hold
                return None
        raise self._rejected()  # outside the lock: listeners run inline

    def _abandon(self, w: _Waiter) -> bool:
        """The waiter stops waiting; True when it had been handed a slot after all."""
        with self._lock:
            if w.granted:
                return True
            with contextlib.suppress(ValueError):  # _wake dropped it (its future was cancelled)
                self._waiters.remove(w)
            return False

    def _enter_slow(self, timeout: float | None) -> None:
        if not self.max_queue:
            raise self._rejected()
        wait = self._budget(timeout)
        w = self._register(wait, _ThreadWaiter)
        if w is None:
            return
        try:
            got = w.wait(wait)
        except BaseException:
            if self._abandon(w):
                self.leave()
            raise
        if got or self._abandon(w):
            return
        raise self._rejected()

    async def _aenter_slow(self, timeout: float | None) -> None:  # noqa: ASYNC109
        if not self.max_queue:
            raise self._rejected()
        wait = self._budget(timeout)
        loop = asyncio.get_running_loop()
        w = self._register(wait, lambda: _TaskWaiter(loop))
        if w is None:
            return
        try:
            if wait is None:
                await w.future
            else:
                async with asyncio.timeout(wait):
                    await w.future
            return
        except TimeoutError:
            if self._abandon(w):  # the slot arrived as the timer fired: keep it
                return
        except BaseException:
            if self._abandon(w):  # cancelled after being handed a slot: pass it on
                self.leave()
            raise
        raise self._rejected()

    def _rejected(self) -> BulkheadFull:
        if self._events:
            at = self._clock()
            self._emit(BulkheadRejected, self.name, at, running=self.running, queued=self.queued)
        return BulkheadFull(self.name, self.max_concurrent, self.max_queue)
