"""The circuit breaker: stop calling a downstream that is failing, and find out when it is back.

::

    CLOSED --(failure or slow-call rate >= threshold, with >= minimum_calls in the window)--> OPEN
    OPEN --(cooldown elapsed; checked when the next call arrives)--> HALF_OPEN
    HALF_OPEN --(all half_open_calls trials succeed)--> CLOSED (fresh window)
    HALF_OPEN --(any trial fails)--> OPEN (new cooldown)
    force_open() -> FORCED_OPEN, disable() -> DISABLED, reset() -> CLOSED

The module reads top to bottom: the settings (``BreakerOptions``) and the metrics snapshot,
then ``CircuitBreaker``: its permit protocol, the transitions, and the front doors.

**One permit protocol.** ``acquire()`` (or ``try_acquire()``, which returns 0 instead of
raising, or ``admit()``, which returns an OPEN breaker's remaining wait for the caller to raise)
admits a call and returns a permit; exactly one of ``on_success``, ``on_failure``,
``on_error`` or ``release`` hands it back. These methods are the only code that reads or
writes the breaker's state and counters: ``call``, ``acall``, the decorator, ``Pipeline`` and
the transports all go through them. A permit is the state word at admission, so an outcome
that arrives after the breaker moved on (a slow call admitted while CLOSED finishing in
HALF_OPEN) is recognised and cannot be mistaken for a trial.

**The state word.** ``_g`` packs the state (bits 0-2), a "guarded" flag (bit 3: this breaker
needs the clock on every call: slow-call timing, a count window or ``clock_every=1``) and a
generation (bits 4+) that changes on every transition. ``_g & _FAST_MASK == 0`` is the closed
fast path: CLOSED and not guarded. Each transition also sets the two words admission reads
first: ``_pass`` (the state word while CLOSED or DISABLED, which admit every call, else 0) and
``_shut_until`` (the end of the cooldown while OPEN with no listener, else minus infinity), so
both hot paths, a call let through and a call rejected while the downstream is down, cost one
attribute test (and, for the rejection, one clock reading and a comparison).

**The closed fast path takes no lock and reads no clock.** A success bumps ``itertools.count``,
whose ``next()`` is one C call; successes are booked into the window each time the clock is
read: on every failure, and every ``clock_every``-th success while calls are frequent (every
success when they are not). Successes between two readings are booked at the earlier reading,
so a success may be dated up to ``clock_every - 1`` calls early; failures are always dated
exactly. Every transition, every failure and every booking runs under ``_lock``, so the state
machine is correct without relying on the GIL. The two lock-free steps are the counts of
successes and of rejections: ``next()`` on ``itertools.count`` is one C call, and
``self._rejected += 1.0`` loads, adds and stores with no point in between where CPython's
interpreter lets another thread run; on a free-threaded build, where neither is atomic, a race
can under-count (never over-count), and no transition depends on the exact figures.
``tests/resilience/test_breaker.py`` hammers one breaker from several threads and checks the
totals.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from interlink.clock import Clock
from interlink.errors import CircuitOpenError
from interlink.resilience import _validate as v
from interlink.resilience._window import CountWindow, TimeWindow
from interlink.resilience.deadline import expired
from interlink.resilience.events import CallRejected, Emitter, Listener, PolicyEvent, StateChanged

__all__ = ["DEFAULT_OPTIONS", "BreakerMetrics", "BreakerOptions", "CircuitBreaker", "State"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
DEFAULT_WINDOW = 30.0
DEFAULT_MINIMUM_CALLS = 10
DEFAULT_COOLDOWN = 60.0
DEFAULT_HALF_OPEN_CALLS = 1
DEFAULT_BUCKETS = 10
DEFAULT_CLOCK_EVERY = 64


class State(Enum):
    """Where a breaker stands; the value is what events and metrics report."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


# The state word (see the module docstring).
_CLOSED, _OPEN, _HALF_OPEN, _FORCED_OPEN, _DISABLED = 0, 1, 2, 3, 4
_STATE_BITS = 0b111
_GUARDED = 0b1000
_FAST_MASK = _STATE_BITS | _GUARDED
_GEN = 0b10000
_NEVER = float("-inf")  # no clock reading is earlier: the short rejection path is off
_STATES = (State.CLOSED, State.OPEN, State.HALF_OPEN, State.FORCED_OPEN, State.DISABLED)


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot: the window's figures, then lifetime totals since construction."""

    state: State
    calls: int
    failures: int
    slow_calls: int
    failure_rate: float
    slow_call_rate: float
    successes_total: int
    failures_total: int
    rejected_total: int


def _exception_types(name: str, types: object) -> tuple[type[BaseException], ...]:
    if isinstance(types, type):
        types = (types,)
    if not isinstance(types, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in types
    ):
        raise ValueError(f"'{name}' must be a tuple of exception types: {types!r}")
    return types


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerOptions:
    """A breaker's settings, validated once; share one object among many breakers and derive
    variants with ``dataclasses.replace``. See ``CircuitBreaker`` for what each one means."""

    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    window: float = DEFAULT_WINDOW
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    cooldown: float = DEFAULT_COOLDOWN
    half_open_calls: int = DEFAULT_HALF_OPEN_CALLS
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float = 1.0
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    window_type: Literal["time", "count"] = "time"
    buckets: int = DEFAULT_BUCKETS
    clock_every: int = DEFAULT_CLOCK_EVERY

    def __post_init__(self) -> None:
        v.fraction("failure_rate_threshold", self.failure_rate_threshold)
        v.fraction("slow_call_rate_threshold", self.slow_call_rate_threshold)
        v.positive_int("minimum_calls", self.minimum_calls)
        v.non_negative("cooldown", self.cooldown)
        v.positive_int("half_open_calls", self.half_open_calls)
        if self.slow_call_duration is not None:
            v.positive("slow_call_duration", self.slow_call_duration)
        if self.window_type not in ("time", "count"):
            raise ValueError(f"'window_type' must be 'time' or 'count': {self.window_type!r}")
        if self.window_type == "time":
            v.positive("window", self.window)
        else:
            if isinstance(self.window, float) and not self.window.is_integer():
                raise ValueError(f"'window' must be a whole number of calls: {self.window!r}")
            v.positive_int("window", int(self.window))
        v.positive_int("buckets", self.buckets)
        every = self.clock_every
        if (
            isinstance(every, bool)
            or not isinstance(every, int)
            or every < 1
            or every & (every - 1)
        ):
            raise ValueError(f"'clock_every' must be a power of two >= 1: {every!r}")
        object.__setattr__(
            self, "record_exceptions", _exception_types("record_exceptions", self.record_exceptions)
        )
        object.__setattr__(
            self, "ignore_exceptions", _exception_types("ignore_exceptions", self.ignore_exceptions)
        )

    @property
    def guarded(self) -> bool:
        """Does every call need the clock (slow-call timing, count window, exact booking)?"""
        return (
            self.slow_call_duration is not None
            or self.window_type == "count"
            or self.clock_every == 1
        )


DEFAULT_OPTIONS = BreakerOptions()

#: the options ``describe()`` lists
_DESCRIBED = (
    "failure_rate_threshold",
    "window",
    "window_type",
    "minimum_calls",
    "cooldown",
    "half_open_calls",
    "slow_call_duration",
    "slow_call_rate_threshold",
)


class _Live:
    """A breaker's bookkeeping, made on first use (under the breaker's lock)."""

    __slots__ = (
        "admitted",
        "booked",
        "failures_total",
        "guarded_successes",
        "last_tick",
        "readings",
        "trials_ok",
        "win",
    )

    def __init__(self) -> None:
        self.win: TimeWindow | CountWindow | None = None
        self.booked = 0  # closed-path successes already booked into the window
        self.readings = 0  # values the lock-holder took from the success counter to read it
        self.guarded_successes = 0
        self.failures_total = 0
        self.last_tick = 0.0
        self.admitted = 0
        self.trials_ok = 0


class CircuitBreaker:
    """Reject calls to a failing downstream at once, then probe it with a few trial calls.

    Parameters are Resilience4j's, in seconds. ``record_exceptions`` count as failures,
    ``ignore_exceptions`` count as nothing; any other exception counts as a success (the callee
    answered; the answer was just an error the caller asked for). ``BaseException``s that are not
    ``Exception`` (cancellation, interrupts) are never recorded.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_events",
        "_g",
        "_live",
        "_lock",
        "_mask",
        "_open_until",
        "_opts",
        "_pass",
        "_rejected",
        "_shut_until",
        "_succ_counter",
        "name",
    )

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
        self._setup(name, DEFAULT_OPTIONS if opts == DEFAULT_OPTIONS else opts, clock, listeners)

    def _setup(
        self, name: str, opts: BreakerOptions, clock: Clock, listeners: Iterable[Listener]
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"'name' must be a non-empty string: {name!r}")
        self.name = name
        self._opts = opts
        self._clock = clock
        self._events: Emitter | tuple[()] = Emitter(listeners) if listeners else ()
        self._lock = threading.Lock()
        self._succ_counter = itertools.count()
        # a float, not an int: the interpreter adds floats in place of a freed one, an int
        # it allocates, and this runs on every rejection (exact up to 2**53 of them)
        self._rejected = 0.0
        self._mask = 0
        self._open_until = 0.0
        self._shut_until = _NEVER
        self._live: _Live | None = None
        self._g = self._pass = _GEN | (_GUARDED if opts.guarded else 0) | _CLOSED

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
        breaker = cls.__new__(cls)
        breaker._setup(name, options, clock, listeners)
        return breaker

    options: v.ReadOnly[BreakerOptions] = v.ReadOnly("_opts", "The settings, as one frozen object.")
    clock: v.ReadOnly[Clock] = v.ReadOnly(
        "_clock", "The clock that times calls (drivers measure ``duration`` with it)."
    )

    @property
    def times_calls(self) -> bool:
        """Does ``on_success``/``on_failure`` need the call's ``duration`` (slow-call detection)?
        Drivers skip reading the clock when it does not."""
        return self._opts.slow_call_duration is not None

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
            st = self._st
            if self._g & _STATE_BITS == _CLOSED:
                self._tick(self._clock(), success=False)
            win = st.win
            calls = win.calls if win else 0
            failures = win.failures if win else 0
            slow = win.slow if win else 0
            failures_total = st.failures_total
            successes_total = self._read_successes() + st.guarded_successes
            rejected_total = int(self._rejected)
        return BreakerMetrics(
            state=self.state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            successes_total=successes_total,
            failures_total=failures_total,
            rejected_total=rejected_total,
        )

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()`` and logs."""
        return v.described("breaker", self.name, self._opts, _DESCRIBED)

    def add_listener(self, listener: Listener) -> None:
        """Receive StateChanged and CallRejected events."""
        with self._lock:
            events = self._events
            if not isinstance(events, Emitter):
                events = self._events = Emitter()
            events.add(listener)
            self._shut_until = _NEVER  # each rejection is reported now: off the short path

    def remove_listener(self, listener: Listener) -> None:
        """Stop receiving events."""
        with self._lock:
            if isinstance(self._events, Emitter):
                self._events.remove(listener)
            self._shut_until = self._shut_until_for(self._g & _STATE_BITS)

    def force_open(self) -> None:
        """Reject every call until ``reset()`` (an operator's kill switch)."""
        self._force(_FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing until ``reset()``."""
        self._force(_DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with an empty window."""
        self._force(_CLOSED)

    # ------------------------------------------------------------------ the permit protocol

    def try_acquire(self) -> int:
        """A permit (a truthy int) when the call may go ahead, 0 when it must not (counted and
        reported as a rejection); never raises.

        Pass a permit to exactly one of ``on_success``, ``on_error``, ``on_failure`` or
        ``release``.
        """
        try:
            permit = self.admit()
        except CircuitOpenError:
            return 0
        return permit if type(permit) is int else 0

    def closed_permit(self) -> int:
        """The permit of a call on the closed fast path (CLOSED, not timing calls), or 0,
        counting nothing, in any other state: for a transport that settles such calls itself
        and hands every other call to ``acquire`` (the one place that admits, rejects and
        moves OPEN to HALF_OPEN)."""
        g = self._g
        return 0 if g & _FAST_MASK else g

    def acquire(self) -> int:
        """Like ``try_acquire`` but raises ``CircuitOpenError`` instead of returning 0."""
        if g := self._pass:
            return g
        permit = self.admit()
        if type(permit) is not int:
            raise CircuitOpenError(self.name, permit)
        return permit

    def admit(self) -> int | float:
        """``acquire`` for a front door that raises the rejection itself: a permit (an int) when
        the call may go ahead; when the breaker is OPEN, the call is rejected (counted and
        reported) and the seconds until it lets a trial through come back as a float, for the
        caller to ``raise CircuitOpenError(breaker.name, seconds)``. Other rejections (FORCED_OPEN,
        HALF_OPEN with its trials taken) raise ``CircuitOpenError`` here.

        Why the float: while a downstream is down this runs on every call, and an exception
        raised here would cost each rejection about 7 % more CPU than one the caller raises
        (its traceback records this frame too, which then outlives the call).
        """
        if g := self._pass:  # CLOSED or DISABLED: the permit is the state word
            return g
        clock = self._clock  # read as an attribute: self._clock() would look it up as a method
        now = clock()
        until = self._shut_until
        if now < until:  # OPEN inside its cooldown, and nobody listens: nothing to report
            self._rejected += 1.0
            return until - now
        return self._admit_or_raise(now)

    def on_success(self, permit: int, duration: float | None = None) -> None:
        """The call admitted with ``permit`` succeeded, taking ``duration`` seconds if known."""
        if not permit & _FAST_MASK:
            n = next(self._succ_counter)
            if not (n & self._mask):
                self._tick_success()
            return
        code = permit & _STATE_BITS
        if code == _CLOSED:
            self._record_guarded(permit, failed=False, duration=duration)
        elif code == _HALF_OPEN:
            self._trial_done(permit, ok=not self._is_slow(duration))

    def on_failure(self, permit: int, duration: float | None = None) -> None:
        """The call admitted with ``permit`` failed (an outcome judged a failure, e.g. a 503)."""
        code = permit & _STATE_BITS
        if code == _CLOSED:
            self._record_guarded(permit, failed=True, duration=duration)
        elif code == _HALF_OPEN:
            self._trial_done(permit, ok=False)

    def on_error(self, permit: int, exc: BaseException, duration: float | None = None) -> None:
        """The call raised ``exc``: classify it, then record a failure, a success or nothing.

        A cancellation counts as nothing (the caller went away), except when the current
        deadline has passed: then a timeout cancelled a call that hung, which is a failure.
        """
        if not isinstance(exc, Exception):
            if isinstance(exc, asyncio.CancelledError) and expired():
                self.on_failure(permit, duration)
            else:
                self.release(permit)
        elif isinstance(exc, self._opts.ignore_exceptions):
            self.release(permit)
        elif isinstance(exc, self._opts.record_exceptions):
            self.on_failure(permit, duration)
        else:
            self.on_success(permit, duration)

    def release(self, permit: int) -> None:
        """The admitted call ended without an outcome to record (cancelled, ignored error)."""
        if permit & _STATE_BITS == _HALF_OPEN:
            with self._lock:
                if self._g == permit and self._st.admitted > 0:
                    self._st.admitted -= 1

    # ------------------------------------------------------------------ front doors

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker."""
        permit = self.admit()
        if type(permit) is not int:
            raise CircuitOpenError(self.name, permit)
        if self._opts.slow_call_duration is not None:
            return self._call_timed(permit, fn, args, kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(permit, exc)
            raise
        self.on_success(permit)
        return result

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` through the breaker."""
        permit = self.admit()
        if type(permit) is not int:
            raise CircuitOpenError(self.name, permit)
        if self._opts.slow_call_duration is not None:
            return await self._acall_timed(permit, fn, args, kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(permit, exc)
            raise
        self.on_success(permit)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a ``def`` or an ``async def``: every call goes through ``call``/``acall``'s
        steps (the wrapper is written out here only to save a call frame per call)."""
        acquire, admit = self.acquire, self.admit
        on_success, on_error = self.on_success, self.on_error
        if self._opts.slow_call_duration is not None:
            if inspect.iscoroutinefunction(fn):
                afn = cast(Callable[..., Awaitable[Any]], fn)

                @functools.wraps(fn)
                async def async_timed(*args: Any, **kwargs: Any) -> Any:
                    return await self._acall_timed(acquire(), afn, args, kwargs)

                return async_timed

            @functools.wraps(fn)
            def timed(*args: P.args, **kwargs: P.kwargs) -> Any:
                return self._call_timed(acquire(), fn, args, kwargs)

            return timed

        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                permit = admit()
                if type(permit) is not int:
                    raise CircuitOpenError(self.name, permit)
                try:
                    result = await afn(*args, **kwargs)
                except BaseException as exc:
                    on_error(permit, exc)
                    raise
                on_success(permit)
                return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            permit = admit()
            if type(permit) is not int:
                raise CircuitOpenError(self.name, permit)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                on_error(permit, exc)
                raise
            on_success(permit)
            return result

        return wrapper

    def _call_timed(self, permit: int, fn: Callable[..., T], args: Any, kwargs: Any) -> T:
        clock = self._clock
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.on_error(permit, exc, clock() - start)
            raise
        self.on_success(permit, clock() - start)
        return result

    async def _acall_timed(
        self, permit: int, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any
    ) -> T:
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

    # ------------------------------------------------------------------ transitions (internal)

    @property
    def _st(self) -> _Live:
        # under the lock only: the bookkeeping an idle breaker does not need to carry
        live = self._live
        if live is None:
            live = self._live = _Live()
        return live

    def _read_successes(self) -> int:
        """Closed-path successes so far; under the lock. ``itertools.count`` has no read, so
        this takes a value and remembers it took one."""
        st = self._st
        value = next(self._succ_counter) - st.readings
        st.readings += 1
        return value

    def _is_slow(self, duration: float | None) -> bool:
        limit = self._opts.slow_call_duration
        return limit is not None and duration is not None and duration >= limit

    def _admit_or_raise(self, now: float) -> int | float:
        """``admit`` off its short paths, in a method of its own so that ``admit`` keeps few
        locals (the interpreter sets up and clears each one on every call)."""
        permit = self._admit(self._g, now)
        if permit:
            return permit
        code = self._g & _STATE_BITS
        if code == _OPEN:  # rejected and reported by _admit, or re-opened by a failed trial
            return max(self._open_until - now, 0.0)
        raise CircuitOpenError(self.name, None, _STATES[code].value)

    def _admit(self, g: int, now: float) -> int:
        """``admit`` off its short paths: a permit, or 0 (counted and reported)."""
        code = g & _STATE_BITS
        if code in (_CLOSED, _DISABLED):  # the state changed while admit looked
            return g
        if code == _OPEN:
            if now < self._open_until:
                return self._reject(now, "open", self._open_until - now)
            self._to_half_open(g)
            g = self._g
            code = g & _STATE_BITS
            if code in (_CLOSED, _DISABLED):
                return g
        if code == _HALF_OPEN:
            with self._lock:
                if self._g == g and self._st.admitted < self._opts.half_open_calls:
                    self._st.admitted += 1
                    return g
            return self._reject(now, "half_open", None)
        if code == _OPEN:  # re-opened by a failed trial while we looked
            return self._reject(now, "open", self._open_until - now)
        return self._reject(now, _STATES[code].value, None)

    def _reject(self, now: float, state: str, left: float | None) -> int:
        self._rejected += 1.0
        if self._events:
            self._emit(
                CallRejected(kind="breaker", name=self.name, at=now, state=state, remaining=left)
            )
        return 0

    def _new_window(self) -> TimeWindow | CountWindow:
        if self._opts.window_type == "count":
            return CountWindow(int(self._opts.window))
        return TimeWindow(self._opts.window, self._opts.buckets)

    def _tick(self, now: float, *, success: bool) -> TimeWindow | CountWindow:
        """Book the fast path's successes and move the window to ``now``; under the lock."""
        st = self._st
        win = st.win
        if win is None:
            win = st.win = self._new_window()
            win.advance(now)
        value = self._read_successes()
        pending = value - st.booked
        st.booked = value
        if success and pending == 1:
            win.advance(now)  # a lone success: it happened now
            win.add(1, 0, 0)
        else:
            if pending:
                win.add(pending, 0, 0)  # booked at the previous reading
            win.advance(now)
        if isinstance(win, TimeWindow):
            gap = now - st.last_tick
            calls = pending if pending else 1
            # fast: clock_every calls at this pace span at most a quarter of a bucket
            fast = calls * win.width >= 4 * self._opts.clock_every * gap
            self._mask = self._opts.clock_every - 1 if fast else 0
        st.last_tick = now
        return win

    def _tick_success(self) -> None:
        with self._lock:
            if self._g & _FAST_MASK == _CLOSED:
                self._tick(self._clock(), success=True)

    def _emit(self, event: PolicyEvent) -> None:
        events = self._events
        if isinstance(events, Emitter):
            events.emit(event)

    def _record_guarded(self, permit: int, *, failed: bool, duration: float | None) -> None:
        event = None
        with self._lock:
            now = self._clock()
            if failed:
                self._st.failures_total += 1
            elif permit & _GUARDED:
                self._st.guarded_successes += 1
            if self._g != permit:  # the breaker moved on while this call ran
                return
            win = self._tick(now, success=False)
            slow = 1 if self._is_slow(duration) else 0
            if failed or permit & _GUARDED:
                win.add(1, 1 if failed else 0, slow)
            if failed or slow:
                event = self._evaluate(win, now)
        if event is not None:
            self._emit(event)

    def _evaluate(self, win: TimeWindow | CountWindow, now: float) -> StateChanged | None:
        calls = win.calls
        needed = self._opts.minimum_calls
        if isinstance(win, CountWindow):
            needed = min(needed, int(self._opts.window))
        if calls < needed:
            return None
        if win.failures >= self._opts.failure_rate_threshold * calls or (
            self._opts.slow_call_duration is not None
            and win.slow >= self._opts.slow_call_rate_threshold * calls
        ):
            return self._transition(_OPEN, now)
        return None

    def _trial_done(self, permit: int, *, ok: bool) -> None:
        event = None
        with self._lock:
            if ok:
                self._st.guarded_successes += 1
            else:
                self._st.failures_total += 1
            if self._g != permit:
                return
            now = self._clock()
            if not ok:
                event = self._transition(_OPEN, now)
            else:
                self._st.trials_ok += 1
                if self._st.trials_ok >= self._opts.half_open_calls:
                    event = self._transition(_CLOSED, now)
        if event is not None and self._events:
            self._emit(event)

    def _to_half_open(self, g: int) -> None:
        event = None
        with self._lock:
            if self._g == g:
                event = self._transition(_HALF_OPEN, self._clock())
        if event is not None and self._events:
            self._emit(event)

    def _force(self, code: int) -> None:
        with self._lock:
            event = self._transition(code, self._clock())
        if event is not None and self._events:
            self._emit(event)

    def _shut_until_for(self, code: int) -> float:
        """``admit``'s short rejection path: the end of the cooldown while OPEN with no listener
        (a rejection is then one clock read and a comparison), else never."""
        return self._open_until if code == _OPEN and not self._events else _NEVER

    def _transition(self, code: int, now: float) -> StateChanged | None:
        """Move to ``code``; under the lock. Returns the event to emit once the lock is free."""
        old = self._g
        new = ((old // _GEN) + 1) * _GEN | (old & _GUARDED) | code
        if code == _OPEN:
            self._open_until = now + self._opts.cooldown
        elif code == _HALF_OPEN:
            self._st.admitted = 0
            self._st.trials_ok = 0
        elif code == _CLOSED:
            if self._st.win is not None:
                self._st.win.reset()
            self._st.booked = self._read_successes()
            self._mask = 0
            self._st.last_tick = now
        # the short paths' words before the state word: a reader never pairs the new state
        # with an old cooldown
        self._shut_until = self._shut_until_for(code)
        self._pass = new if code in (_CLOSED, _DISABLED) else 0
        self._g = new
        if not self._events:
            return None
        return StateChanged(
            kind="breaker",
            name=self.name,
            at=now,
            old=_STATES[old & _STATE_BITS].value,
            new=_STATES[code].value,
        )
