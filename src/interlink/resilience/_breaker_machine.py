"""The breaker's state machine: permits in, outcomes out, transitions under one lock.

``CircuitBreaker`` adds construction, inspection and the front doors (``call``, ``acall``, the
decorator) on top. Everything here is the protocol those front doors, the pipelines and the
transports share: ``acquire``/``try_acquire`` give a permit (the state word at admission), and
exactly one of ``on_success``/``on_error``/``on_failure``/``release`` hands it back.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

from interlink.clock import Clock
from interlink.errors import CircuitOpenError
from interlink.resilience._breaker_options import BreakerOptions
from interlink.resilience._breaker_state import (
    _CLOSED,
    _DISABLED,
    _FAST_MASK,
    _FORCED_OPEN,
    _GEN,
    _GUARDED,
    _HALF_OPEN,
    _OPEN,
    _STATE_BITS,
    _STATES,
    State,
    _count_value,
    _Live,
)
from interlink.resilience._window import CountWindow, TimeWindow
from interlink.resilience.deadline import expired
from interlink.resilience.events import CallRejected, Emitter, PolicyEvent, StateChanged


class BreakerMachine:
    """The state and transitions of one breaker; see ``CircuitBreaker`` for the settings."""

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
        "_rejected",
        "_succ_counter",
        "name",
    )

    name: str
    _clock: Clock
    _events: Emitter | tuple[()]
    _g: int
    _live: _Live | None
    _lock: threading.Lock
    _mask: int
    _open_until: float
    _opts: BreakerOptions
    _rejected: itertools.count[int] | None
    _succ_counter: itertools.count[int]

    @property
    def _st(self) -> _Live:
        # under the lock only: the bookkeeping an idle breaker does not need to carry
        live = self._live
        if live is None:
            live = self._live = _Live()
        return live

    # ------------------------------------------------------------------ the state machine

    def try_acquire(self) -> int:
        """A permit (a truthy int) when the call may go ahead, 0 when rejected; never raises.

        Pass the permit to exactly one of ``on_success``, ``on_error``, ``on_failure`` or
        ``release``.
        """
        g = self._g
        code = g & _STATE_BITS
        if code in (_CLOSED, _DISABLED):
            return g
        return self._acquire_slow(g, code, raise_on_reject=False)

    def acquire(self) -> int:
        """Like ``try_acquire`` but raises ``CircuitOpenError`` instead of returning 0."""
        g = self._g
        code = g & _STATE_BITS
        if code in (_CLOSED, _DISABLED):
            return g
        return self._acquire_slow(g, code, raise_on_reject=True)

    def on_success(self, permit: int, duration: float | None = None) -> None:
        """The call admitted with ``permit`` succeeded, taking ``duration`` seconds if known."""
        code = permit & _STATE_BITS
        if code == _CLOSED:
            if not permit & _GUARDED:
                n = next(self._succ_counter)
                if not (n & self._mask):
                    self._tick_success(n + 1)
                return
            self._record_guarded(permit, failed=False, duration=duration)
        elif code == _HALF_OPEN:
            slow = self._is_slow(duration)
            self._trial_done(permit, ok=not slow)

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

    def records(self, exc: BaseException) -> bool:
        """Would ``exc`` count as a failure?"""
        return (
            isinstance(exc, Exception)
            and not isinstance(exc, self._opts.ignore_exceptions)
            and isinstance(exc, self._opts.record_exceptions)
        )

    # ------------------------------------------------------------------ internals

    def _is_slow(self, duration: float | None) -> bool:
        limit = self._opts.slow_call_duration
        return limit is not None and duration is not None and duration >= limit

    def _acquire_slow(self, g: int, code: int, *, raise_on_reject: bool) -> int:
        now = self._clock()
        if code == _OPEN:
            if now < self._open_until:
                return self._reject(now, State.OPEN, self._open_until - now, raise_on_reject)
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
            return self._reject(now, State.HALF_OPEN, None, raise_on_reject)
        if code == _OPEN:  # re-opened by a failed trial while we looked
            return self._reject(now, State.OPEN, self._open_until - now, raise_on_reject)
        return self._reject(now, _STATES[code], None, raise_on_reject)

    def _reject(self, now: float, state: State, left: float | None, raise_: bool) -> int:
        next(self._rejected)  # type: ignore[arg-type]
        if self._events:
            self._emit(
                CallRejected(
                    kind="breaker", name=self.name, at=now, state=state.value, remaining=left
                )
            )
        if raise_:
            raise CircuitOpenError(self.name, left, state.value)
        return 0

    def _new_window(self) -> TimeWindow | CountWindow:
        if self._opts.window_type == "count":
            return CountWindow(int(self._opts.window))
        return TimeWindow(self._opts.window, self._opts.buckets)

    def _tick(
        self, now: float, *, success: bool, value: int | None = None
    ) -> TimeWindow | CountWindow:
        """Book the fast path's successes and move the window to ``now``; under the lock.

        ``value`` is the success counter as the caller saw it (saves reading it back).
        """
        win = self._st.win
        if win is None:
            win = self._st.win = self._new_window()
            win.advance(now)
        if value is None:
            value = _count_value(self._succ_counter)
        pending = value - self._st.booked
        if pending < 0:  # a later reading already booked these
            pending = 0
        else:
            self._st.booked = value
        if success and pending == 1:
            win.advance(now)  # a lone success: it happened now
            win.add(1, 0, 0)
        else:
            if pending:
                win.add(pending, 0, 0)  # booked at the previous reading
            win.advance(now)
        if isinstance(win, TimeWindow):
            gap = now - self._st.last_tick
            calls = pending if pending else 1
            # fast: clock_every calls at this pace span at most a quarter of a bucket
            fast = calls * win.width >= 4 * self._opts.clock_every * gap
            self._mask = self._opts.clock_every - 1 if fast else 0
        self._st.last_tick = now
        return win

    def _tick_success(self, value: int) -> None:
        with self._lock:
            if self._g & _FAST_MASK == _CLOSED:
                self._tick(self._clock(), success=True, value=value)

    def _emit(self, event: PolicyEvent) -> None:
        events = self._events
        if isinstance(events, Emitter):
            events.emit(event)

    def _emit_rejected(self, now: float) -> None:
        self._emit(
            CallRejected(
                kind="breaker",
                name=self.name,
                at=now,
                state="open",
                remaining=self._open_until - now,
            )
        )

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

    def _transition(self, code: int, now: float) -> StateChanged | None:
        """Move to ``code``; under the lock. Returns the event to emit once the lock is free."""
        old = self._g
        flags = old & _GUARDED
        self._g = ((old >> 4) + 1) * _GEN | flags | code
        if code in (_OPEN, _HALF_OPEN, _FORCED_OPEN) and self._rejected is None:
            self._rejected = itertools.count()
        if code == _OPEN:
            self._open_until = now + self._opts.cooldown
        elif code == _HALF_OPEN:
            self._st.admitted = 0
            self._st.trials_ok = 0
        elif code == _CLOSED:
            if self._st.win is not None:
                self._st.win.reset()
            self._st.booked = _count_value(self._succ_counter)
            self._mask = 0
            self._st.last_tick = now
        if not self._events:
            return None
        return StateChanged(
            kind="breaker",
            name=self.name,
            at=now,
            old=_STATES[old & _STATE_BITS].value,
            new=_STATES[code].value,
        )
