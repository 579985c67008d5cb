"""Hedged calls: when the answer is late, ask again and take whichever answer comes first.

A few slow replicas make the tail of a service's latency, not its median ("The Tail at Scale",
Dean & Barroso). A hedge starts the primary attempt, and if no answer came after ``delay``
seconds it starts another one (up to ``max_hedges`` extra attempts, each a further ``delay``
later). The first *successful* answer wins; every other attempt still running is cancelled and
awaited, so nothing outlives the call. This is the hedging policy of Envoy and gRPC and Polly's
hedging strategy.

Decisions, in one place:

* A failed attempt starts the next hedge at once (the answer will not come from it, so waiting
  out the delay only adds latency); the delay for the hedge after that starts again from there.
* When every attempt failed, the error of the **last attempt to fail** is raised, as gRPC and
  Polly report the last outcome: it is the freshest news about the downstream, and it never
  hides behind an ``ExceptionGroup`` a caller's ``except`` clause would miss.
* Hedges are extra load, so they spend the shared retry budget: each call deposits once, each
  hedge must withdraw. A refused hedge is not an error: the attempts already running carry on,
  and no further hedge is started for that call. The same holds once the current deadline
  has run out.
* ``adaptive=True`` takes the delay from the ``percentile`` (p95 by default) of recent
  successful latencies, so only the slowest few percent of calls are hedged whatever the
  downstream's normal speed. Only the winning attempt's own latency is observable, which biases
  the estimate low while hedges win; ``min_delay`` is the floor that keeps it from collapsing.

Async only: hedging runs attempts side by side and cancels the losers, and a blocking call can
neither share its thread with another attempt nor be cancelled.

The module reads top to bottom: the settings, ``Hedge`` (which decides whether a hedge may
start), then ``_Race``, the per-call state of one ``Hedge.acall`` (the attempts running, the
hedge timer, the hedges left, the last error), which lives only as long as that call.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, ParamSpec, Protocol, TypeVar

from interlink.clock import AsyncSleep, Clock, async_sleep_of
from interlink.resilience._latency import LatencyTracker
from interlink.resilience._validate import ReadOnly, described, fraction, non_negative, positive_int
from interlink.resilience.deadline import remaining
from interlink.resilience.events import Emitter, HedgeLaunched, Listener, Observed

__all__ = [
    "DEFAULT_DELAY",
    "DEFAULT_MAX_HEDGES",
    "DEFAULT_MIN_DELAY",
    "DEFAULT_PERCENTILE",
    "LATENCY_WINDOW",
    "MIN_SAMPLES",
    "REFRESH_EVERY",
    "Hedge",
    "HedgeBudget",
    "HedgeOptions",
]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_DELAY = 0.05
DEFAULT_MAX_HEDGES = 1
DEFAULT_PERCENTILE = 0.95
DEFAULT_MIN_DELAY = 0.001
LATENCY_WINDOW = 512  # successful latencies the adaptive delay is computed from
MIN_SAMPLES = 20  # below this many, the adaptive delay falls back to ``delay``
REFRESH_EVERY = 16  # recompute the percentile at most once per this many records

#: the options ``describe()`` lists (then the budget's name)
_DESCRIBED = ("delay", "max_hedges", "adaptive", "percentile", "min_delay")

_SYNC_ONLY = (
    "hedging needs async code: a hedge runs attempts side by side and cancels the losers, "
    "and a blocking call can neither share its thread with another attempt nor be cancelled; "
    "use `await hedge.acall(fn, ...)` or decorate an `async def`"
)


class HedgeBudget(Protocol):
    """What a hedge needs from a retry budget (``interlink.resilience.budget.RetryBudget``)."""

    def deposit(self) -> None:
        """Credit one call."""

    def try_withdraw(self) -> bool:
        """Take one token for an extra attempt; False when the budget says no."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeOptions:
    """The settings of a hedge, validated once; see the module docstring for their meaning."""

    delay: float = DEFAULT_DELAY
    max_hedges: int = DEFAULT_MAX_HEDGES
    adaptive: bool = False
    percentile: float = DEFAULT_PERCENTILE
    min_delay: float = DEFAULT_MIN_DELAY
    name: str = "hedge"

    def __post_init__(self) -> None:
        non_negative("delay", self.delay)
        positive_int("max_hedges", self.max_hedges)
        fraction("percentile", self.percentile)
        non_negative("min_delay", self.min_delay)


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with ``async def __call__``
    )


class Hedge(Observed):
    """Start extra attempts when the first is slow; the first success wins, the rest are cancelled.

    ``await hedge.acall(fn, *args, **kwargs)`` or ``@hedge`` on an ``async def``. ``clock`` and
    ``asleep`` drive the delay (a ``FakeClock`` makes it instant); ``budget`` is a shared retry
    budget the hedges spend; ``listeners`` receive a ``HedgeLaunched`` per hedge started.
    """

    __slots__ = (
        "_asleep",
        "_budget",
        "_clock",
        "_delay",
        "_latency",
        "_max_hedges",
        "_min_delay",
        "_real_timer",
        "options",
    )

    _kind = "hedge"

    def __init__(
        self,
        delay: float = DEFAULT_DELAY,
        *,
        max_hedges: int = DEFAULT_MAX_HEDGES,
        budget: HedgeBudget | None = None,
        adaptive: bool = False,
        percentile: float = DEFAULT_PERCENTILE,
        min_delay: float = DEFAULT_MIN_DELAY,
        name: str = "hedge",
        clock: Clock = time.monotonic,
        asleep: AsyncSleep | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.options = HedgeOptions(
            delay=delay,
            max_hedges=max_hedges,
            adaptive=adaptive,
            percentile=percentile,
            min_delay=min_delay,
            name=name,
        )
        self._delay = float(delay)
        self._max_hedges = max_hedges
        self._min_delay = float(min_delay)
        self._budget = budget
        self._clock = clock
        self._asleep = async_sleep_of(clock, asleep)
        # With the real sleep, a loop timer (call_later) is cheaper than a sleeping task.
        self._real_timer = self._asleep is asyncio.sleep
        super().__init__(listeners)
        self._latency = (
            LatencyTracker(
                LATENCY_WINDOW,
                percentile=percentile,
                min_samples=MIN_SAMPLES,
                refresh=REFRESH_EVERY,
            )
            if adaptive
            else None
        )

    name: ReadOnly[str] = ReadOnly("options.name", "The name events and ``describe()`` report.")
    events: ReadOnly[Emitter] = ReadOnly(
        "_events", "The listeners; ``hedge.events.add(listener)`` subscribes after construction."
    )
    latencies: ReadOnly[LatencyTracker | None] = ReadOnly(
        "_latency",
        "The recent successful latencies behind an adaptive delay (None when not adaptive).",
    )

    def current_delay(self) -> float:
        """Seconds the next call waits before its first hedge.

        Fixed ``delay``; or, when adaptive and enough latencies are known, their percentile,
        never below ``min_delay``.
        """
        tracker = self._latency
        if tracker is not None:
            learned = tracker.value()
            if learned is not None:
                return learned if learned > self._min_delay else self._min_delay
        return self._delay

    def describe(self) -> dict[str, object]:
        """The settings, for tests and pipeline descriptions."""
        o = self.options
        budget = self._budget
        description = described(self._kind, o.name, o, _DESCRIBED)
        description["budget"] = (
            None if budget is None else getattr(budget, "name", type(budget).__name__)
        )
        return description

    def call(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> NoReturn:
        """Always raises ``TypeError``: hedging needs async code (see the message)."""
        raise TypeError(_SYNC_ONLY)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call is hedged; a plain ``def`` is a TypeError."""
        if not _is_async(fn):
            raise TypeError(f"{_SYNC_ONLY} (got {fn!r})")

        @functools.wraps(fn)
        async def hedged(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.acall(fn, *args, **kwargs)

        return hedged

    def _may_hedge(self) -> bool:
        # Deadline first: a hedge that cannot finish should not spend a budget token either.
        left = remaining()
        if left is not None and left <= 0.0:
            return False
        budget = self._budget
        return budget is None or budget.try_withdraw()

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` hedged; return the first successful result.

        Raises the error of the last attempt to fail when all of them failed. Cancelling the
        caller cancels every attempt.
        """
        budget = self._budget
        if budget is not None:
            budget.deposit()
        race = _Race(self, functools.partial(fn, *args, **kwargs))
        try:
            while True:
                await race.wait()
                winner = race.settle()
                if winner is not None:
                    return winner.result()
        finally:
            await race.close()


# ---------------------------------------------------------------------- one call's race


def _fire(timer: asyncio.Future[None]) -> None:
    if not timer.done():
        timer.set_result(None)


class _Race(Generic[T]):
    """One hedged call in flight: its attempts, its hedge timer and the hedges left to start."""

    __slots__ = (
        "attempt",
        "attempts",
        "delay",
        "error",
        "handle",
        "hedge",
        "hedges_left",
        "loop",
        "timer",
        "wake",
    )

    def __init__(self, hedge: Hedge, attempt: Callable[[], Awaitable[T]]) -> None:
        self.hedge = hedge
        self.attempt = attempt
        """One attempt of the call (``fn`` with its arguments), started once per attempt."""
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
        task = asyncio.ensure_future(self.attempt())
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
                number = hedge._max_hedges - self.hedges_left
                delay = self.delay if fired else 0.0
                hedge._emit(HedgeLaunched, hedge.name, hedge._clock(), hedge=number, delay=delay)
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
