"""One hedged call in flight: the race between its attempts.

``Hedge`` holds the settings and decides whether a hedge may start; the race holds the per-call
state (the attempts running, the hedge timer, the hedges left, the last error) and lives only as
long as one ``Hedge.acall``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from interlink.resilience.events import HedgeLaunched

if TYPE_CHECKING:
    from interlink.resilience.hedge import Hedge

T = TypeVar("T")


def _fire(timer: asyncio.Future[None]) -> None:
    if not timer.done():
        timer.set_result(None)


class _Race(Generic[T]):
    """One hedged call in flight: its attempts, its hedge timer and the hedges left to start."""

    __slots__ = (
        "args",
        "attempts",
        "delay",
        "error",
        "fn",
        "handle",
        "hedge",
        "hedges_left",
        "kwargs",
        "loop",
        "timer",
        "wake",
    )

    def __init__(
        self,
        hedge: Hedge,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.hedge = hedge
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.loop = asyncio.get_running_loop()
        self.delay = hedge.current_delay()
        self.hedges_left = hedge._max_hedges
        self.error: BaseException | None = None
        self.timer: asyncio.Future[None] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.wake: asyncio.Future[None] | None = None
        # Running attempts in launch order (so "the last to fail" is well defined even when
        # several finish in one loop step), each with its start time when latencies are kept.
        self.attempts: dict[asyncio.Future[T], float] = {}
        self._start_attempt()
        self._start_timer()

    def _start_attempt(self) -> None:
        task = asyncio.ensure_future(self.fn(*self.args, **self.kwargs))
        self.attempts[task] = 0.0 if self.hedge._latency is None else self.hedge._clock()
        task.add_done_callback(self._on_done)

    def _start_timer(self) -> None:
        # With the real sleep a loop timer (call_later) is cheaper than a sleeping task; any
        # other sleep (a FakeClock's) runs in a task so tests control the delay.
        if self.hedge._real_timer:
            timer: asyncio.Future[None] = self.loop.create_future()
            self.handle = self.loop.call_later(self.delay, _fire, timer)
        else:
            timer = asyncio.ensure_future(self.hedge._asleep(self.delay))
        timer.add_done_callback(self._on_done)
        self.timer = timer

    def _stop_timer(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        timer = self.timer
        if timer is not None:
            timer.remove_done_callback(self._on_done)  # no spurious wake-up from the cancel
            timer.cancel()
            self.timer = None

    def _on_done(self, _: asyncio.Future[Any]) -> None:
        # Called by every attempt and timer as it finishes. A wake-up for something settle()
        # already handled is harmless: settle() then finds nothing new and we wait again.
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def wait(self) -> None:
        """Until an attempt finishes or the hedge delay passes (asyncio.wait, minus its
        per-round set building and callback juggling)."""
        self.wake = wake = self.loop.create_future()
        await wake

    def settle(self) -> asyncio.Future[T] | None:
        """Take stock after a wake-up: the winner, or None after starting the hedges now due.

        Raises the last error once every attempt failed and no hedge is left to start.
        """
        failed = 0
        for task in [t for t in self.attempts if t.done()]:
            started = self.attempts.pop(task)
            if task.cancelled():  # cancelled by someone else: count it as a failed attempt
                self.error = asyncio.CancelledError()
            elif (exc := task.exception()) is not None:
                self.error = exc
            else:
                if self.hedge._latency is not None:
                    self.hedge._latency.record(self.hedge._clock() - started)
                return task
            failed += 1
        timer = self.timer
        fired = timer is not None and timer.done()
        if fired:
            if (
                self.handle is None
                and timer
                and not timer.cancelled()
                and (bad := timer.exception())
            ):
                raise bad  # the injected asleep failed: a bug to surface, not a delay
            self.timer = self.handle = None
        if failed or fired:
            self._hedge(failed + fired, fired)
        if not self.attempts:
            assert self.error is not None  # only failures empty the set
            raise self.error
        return None

    def _hedge(self, wanted: int, fired: bool) -> None:
        # A failure starts a hedge at once; the delay for the next one restarts from here.
        hedge = self.hedge
        launched = 0
        while launched < wanted and self.hedges_left:
            if not hedge._may_hedge():
                self.hedges_left = 0  # refused: the running attempts carry on alone
                break
            self.hedges_left -= 1
            launched += 1
            self._start_attempt()
            if hedge._events:
                hedge._events.emit(
                    HedgeLaunched(
                        kind="hedge",
                        name=hedge.options.name,
                        at=hedge._clock(),
                        hedge=hedge._max_hedges - self.hedges_left,
                        delay=self.delay if fired else 0.0,
                    )
                )
        if launched or not self.hedges_left:
            self._stop_timer()
        if self.timer is None and self.hedges_left and self.attempts:
            self._start_timer()

    async def close(self) -> None:
        """Cancel and await the losers (and a sleeping timer task): nothing outlives the call."""
        timer_task = self.timer if self.handle is None else None
        self._stop_timer()
        rest: set[asyncio.Future[Any]] = set(self.attempts)
        if timer_task is not None:
            rest.add(timer_task)
        if not rest:
            return
        for task in rest:
            task.cancel()
        await asyncio.wait(rest)
        for task in rest:  # fetch outcomes so asyncio never logs "exception never retrieved"
            if not task.cancelled():
                task.exception()
