"""The circuit breaker: stop calling a downstream that is failing, and find out when it is back.

::

    CLOSED --(failure or slow-call rate >= threshold, with >= minimum_calls in the window)--> OPEN
    OPEN --(cooldown elapsed; checked when the next call arrives)--> HALF_OPEN
    HALF_OPEN --(all half_open_calls trials succeed)--> CLOSED (fresh window)
    HALF_OPEN --(any trial fails)--> OPEN (new cooldown)
    force_open() -> FORCED_OPEN, disable() -> DISABLED, reset() -> CLOSED

One state machine (``acquire``/``try_acquire`` -> permit, then ``on_success``/``on_error``/
``on_failure``/``release``) serves every front door: ``call``, ``acall``, the decorator, and the
pipelines and transports that inline it. A permit is the state word at admission, so an outcome
that arrives after the breaker moved on (a slow call admitted while CLOSED finishing in
HALF_OPEN) is recognised and cannot be mistaken for a trial.

Why the closed path looks the way it does: it is the path every successful call takes, so it
takes no lock and reads no clock. Successes bump a lock-free counter (``itertools.count`` is
atomic under the GIL) and are booked into the time window each time the clock is read: on every
failure, and every ``clock_every``-th success while calls are frequent (every success when they
are not). Successes between two readings are booked at the earlier reading, so at high rates a
success may be dated up to ``clock_every - 1`` calls early; failures are always dated exactly.
``clock_every=1`` reads the clock on every call and books every outcome exactly.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from interlink.clock import Clock
from interlink.errors import CircuitOpenError
from interlink.resilience._breaker_code import decorate
from interlink.resilience._breaker_machine import BreakerMachine
from interlink.resilience._breaker_options import (
    DEFAULT_BUCKETS,
    DEFAULT_CLOCK_EVERY,
    DEFAULT_COOLDOWN,
    DEFAULT_FAILURE_RATE_THRESHOLD,
    DEFAULT_HALF_OPEN_CALLS,
    DEFAULT_MINIMUM_CALLS,
    DEFAULT_OPTIONS,
    DEFAULT_WINDOW,
    BreakerMetrics,
    BreakerOptions,
)
from interlink.resilience._breaker_state import (
    _CLOSED,
    _DISABLED,
    _FAST_MASK,
    _FORCED_OPEN,
    _GEN,
    _GUARDED,
    _OPEN,
    _STATE_BITS,
    _STATES,
    State,
    _count_value,
)
from interlink.resilience.events import Emitter, Listener

__all__ = ["DEFAULT_OPTIONS", "BreakerMetrics", "BreakerOptions", "CircuitBreaker", "State"]

P = ParamSpec("P")
T = TypeVar("T")


class CircuitBreaker(BreakerMachine):
    """Reject calls to a failing downstream at once, then probe it with a few trial calls.

    Parameters are Resilience4j's, in seconds. ``record_exceptions`` count as failures,
    ``ignore_exceptions`` count as nothing; any other exception counts as a success (the callee
    answered; the answer was just an error the caller asked for). ``BaseException``s that are not
    ``Exception`` (cancellation, interrupts) are never recorded.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str,
        *,
        failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD,
        window: float = DEFAULT_WINDOW,
        minimum_calls: int = DEFAULT_MINIMUM_CALLS,
        cooldown: float = DEFAULT_COOLDOWN,
        half_open_calls: int = DEFAULT_HALF_OPEN_CALLS,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 1.0,
        record_exceptions: tuple[type[BaseException], ...] = (Exception,),
        ignore_exceptions: tuple[type[BaseException], ...] = (),
        window_type: Literal["time", "count"] = "time",
        buckets: int = DEFAULT_BUCKETS,
        clock_every: int = DEFAULT_CLOCK_EVERY,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"'name' must be a non-empty string: {name!r}")
        self.name = name
        opts = BreakerOptions(
            failure_rate_threshold=failure_rate_threshold,
            window=window,
            minimum_calls=minimum_calls,
            cooldown=cooldown,
            half_open_calls=half_open_calls,
            slow_call_duration=slow_call_duration,
            slow_call_rate_threshold=slow_call_rate_threshold,
            record_exceptions=record_exceptions,
            ignore_exceptions=ignore_exceptions,
            window_type=window_type,
            buckets=buckets,
            clock_every=clock_every,
        )
        # Breakers with the default settings share one options object: a service with a
        # breaker per downstream keeps hundreds of them, mostly idle.
        self._opts = DEFAULT_OPTIONS if opts == DEFAULT_OPTIONS else opts
        self._clock = clock
        self._events: Emitter | tuple[()] = Emitter(listeners) if listeners else ()
        self._lock = threading.Lock()
        self._succ_counter = itertools.count()
        # made on the first transition to a rejecting state: an idle breaker never needs it
        self._rejected: itertools.count[int] | None = None
        self._mask = 0
        self._open_until = 0.0
        self._live = None
        self._g = _GEN | (_GUARDED if opts.guarded else 0) | _CLOSED

    @classmethod
    def from_options(
        cls,
        name: str,
        options: BreakerOptions,
        *,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
    ) -> CircuitBreaker:
        """A breaker sharing an options object (derive variants with ``dataclasses.replace``)."""
        breaker = cls(name, clock=clock, listeners=listeners)
        breaker._opts = options
        breaker._g = _GEN | (_GUARDED if options.guarded else 0) | _CLOSED
        return breaker

    @property
    def options(self) -> BreakerOptions:
        """The settings, as one frozen object."""
        return self._opts

    # ------------------------------------------------------------------ state and inspection

    @property
    def state(self) -> State:
        """The current state; an OPEN breaker whose cooldown is over reports HALF_OPEN."""
        g = self._g
        if g & _STATE_BITS == _OPEN and self._clock() >= self._open_until:
            self._to_half_open(g)
            g = self._g
        return _STATES[g & _STATE_BITS]

    @property
    def metrics(self) -> BreakerMetrics:
        """Window figures and lifetime totals, with pending successes booked first."""
        with self._lock:
            if self._g & _STATE_BITS == _CLOSED:
                self._tick(self._clock(), success=False)
            win = self._st.win
            calls = win.calls if win else 0
            failures = win.failures if win else 0
            slow = win.slow if win else 0
            failures_total = self._st.failures_total
            successes_total = _count_value(self._succ_counter) + self._st.guarded_successes
        return BreakerMetrics(
            state=self.state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            successes_total=successes_total,
            failures_total=failures_total,
            rejected_total=0 if self._rejected is None else _count_value(self._rejected),
        )

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()`` and logs."""
        return {
            "policy": "breaker",
            "name": self.name,
            "failure_rate_threshold": self._opts.failure_rate_threshold,
            "window": self._opts.window,
            "window_type": self._opts.window_type,
            "minimum_calls": self._opts.minimum_calls,
            "cooldown": self._opts.cooldown,
            "half_open_calls": self._opts.half_open_calls,
            "slow_call_duration": self._opts.slow_call_duration,
            "slow_call_rate_threshold": self._opts.slow_call_rate_threshold,
        }

    def add_listener(self, listener: Listener) -> None:
        """Receive StateChanged and CallRejected events."""
        events = self._events
        if not isinstance(events, Emitter):
            events = self._events = Emitter()
        events.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop receiving events."""
        if isinstance(self._events, Emitter):
            self._events.remove(listener)

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (an operator's kill switch)."""
        self._force(_FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing until ``reset()``."""
        self._force(_DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window."""
        self._force(_CLOSED)

    # ------------------------------------------------------------------ front doors

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker."""
        g = self._g
        if g & _FAST_MASK:
            if g & _STATE_BITS == _OPEN and (now := self._clock()) < self._open_until:
                next(self._rejected)  # type: ignore[arg-type]
                if self._events:
                    self._emit_rejected(now)
                raise CircuitOpenError(self.name, self._open_until - now, "open")
            return self._call_guarded(fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(g, exc)
            raise
        n = next(self._succ_counter)
        if not (n & self._mask):
            self._tick_success(n + 1)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        g = self._g
        if g & _FAST_MASK:
            if g & _STATE_BITS == _OPEN and (now := self._clock()) < self._open_until:
                next(self._rejected)  # type: ignore[arg-type]
                if self._events:
                    self._emit_rejected(now)
                raise CircuitOpenError(self.name, self._open_until - now, "open")
            return await self._acall_guarded(fn, args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(g, exc)
            raise
        n = next(self._succ_counter)
        if not (n & self._mask):
            self._tick_success(n + 1)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a ``def`` or an ``async def``."""
        return decorate(self, fn, is_async=inspect.iscoroutinefunction(fn))

    def _call_guarded(self, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        permit = self.acquire()
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(permit, exc, clock() - start)
            raise
        self.on_success(permit, clock() - start)
        return result

    async def _acall_guarded(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        permit = self.acquire()
        clock = self._clock
        start = clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(permit, exc, clock() - start)
            raise
        self.on_success(permit, clock() - start)
        return result

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={_STATES[self._g & _STATE_BITS].value})"
