"""Retry with exponential backoff and jitter, bounded by retries, deadline and a shared budget.

The decision lives in one place, ``Retry.next_delay``: given the failed attempt and its error,
return how long to wait, or raise to give up. ``call``, ``acall``, the decorator and the
Pipeline's own loop all ask it, so sync and async code can never disagree about when to retry.

Giving up, in the order checked:

- the error is not an ``Exception`` (``CancelledError``, ``KeyboardInterrupt``) or does not
  match ``retry_on``: re-raised at once;
- ``retries`` retries have been made: the last error is re-raised;
- waiting would reach the current deadline (``interlink.resilience.deadline``): the last error
  is re-raised at once rather than sleeping into a ``DeadlineExceeded``;
- the shared ``RetryBudget`` refuses: ``BudgetExhausted`` is raised ``from`` the last error.

A ``CircuitOpenError`` is not retried unless ``retry_on`` names it (or ``RejectedError`` /
``InterlinkError``) or a predicate accepts it: the breaker already decided the downstream is
down, and retrying into it only burns retries and budget. An error with a numeric
``retry_after`` attribute (a ``RateLimited``, an HTTP 429/503 with ``Retry-After``) is retried
after exactly that many seconds instead of the backoff schedule.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from random import Random
from typing import Any, ParamSpec, TypeVar, cast

from interlink.clock import AsyncSleep, Clock, Sleep, async_sleep_of, sleep_of
from interlink.errors import BudgetExhausted, CircuitOpenError, InterlinkError
from interlink.resilience._jitter import checked, schedule_of
from interlink.resilience._validate import ReadOnly, at_least, described
from interlink.resilience.budget import RetryBudget
from interlink.resilience.deadline import remaining
from interlink.resilience.events import Emitter, Listener, Observed, RetryGaveUp, RetryScheduled

__all__ = ["Retry", "RetryOn"]

P = ParamSpec("P")
T = TypeVar("T")

RetryOn = tuple[type[BaseException], ...] | type[BaseException] | Callable[[BaseException], bool]
"""Which errors to retry: exception types (matched with ``isinstance``) or a predicate."""


_Predicate = Callable[[BaseException], bool]

#: the settings ``describe()`` lists (then the budget's own description)
_DESCRIBED = ("retries", "_backoff", "_multiplier", "_max_backoff", "_jitter")


def _retry_on_of(
    retry_on: RetryOn,
) -> tuple[tuple[type[Exception], ...], bool, _Predicate | None]:
    """(types, retry CircuitOpenError?, predicate or None), validated."""
    if isinstance(retry_on, type):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ValueError(
                "'retry_on' must be an exception type, a tuple of them, or a predicate: "
                f"{retry_on!r}"
            )
        # Types that are not Exception subclasses (BaseException, CancelledError) are dropped:
        # those are never retried.
        types = tuple(t for t in retry_on if issubclass(t, Exception))
        named = any(
            issubclass(t, InterlinkError) and issubclass(CircuitOpenError, t) for t in types
        )
        return types, named, None
    if callable(retry_on):
        return (), True, retry_on
    raise ValueError(
        f"'retry_on' must be an exception type, a tuple of them, or a predicate: {retry_on!r}"
    )


class Retry(Observed):
    """Retry a failed call up to ``retries`` more times with exponential backoff.

    ``Retry(3)`` makes up to 4 calls: the first and 3 retries (Polly's ``MaxRetryAttempts``;
    resilience4j's ``maxAttempts`` counts the first call too). The delay before retry number
    ``n`` (0 for the first retry) is ``backoff * multiplier**n`` capped at ``max_backoff``, then
    jittered: ``"full"`` (uniform in [0, d], the default, which spreads a crowd of failing
    clients best), ``"equal"`` (d/2 + uniform [0, d/2]), ``"decorrelated"`` (AWS:
    min(max_backoff, uniform(backoff, 3 * previous delay))) or ``"none"``.
    The object is immutable and holds no per-call state, so one instance serves every thread and
    task; pass a shared ``budget`` to bound retries across all of them. Listeners get a
    ``RetryScheduled`` before each retry and a ``RetryGaveUp`` when the call fails for good.
    """

    __slots__ = (
        "_asleep",
        "_backoff",
        "_budget",
        "_clock",
        "_jitter",
        "_max_backoff",
        "_multiplier",
        "_name",
        "_predicate",
        "_retries",
        "_retry_open",
        "_rng",
        "_schedule",
        "_sleep",
        "_types",
    )

    _kind = "retry"

    def __init__(
        self,
        retries: int = 3,
        *,
        backoff: float = 0.1,
        multiplier: float = 2.0,
        max_backoff: float = 10.0,
        jitter: str = "full",
        retry_on: RetryOn = (Exception,),
        budget: RetryBudget | None = None,
        name: str = "retry",
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        asleep: AsyncSleep | None = None,
        rng: Random | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self._retries = at_least("retries", retries, 0)
        self._backoff, self._multiplier, self._max_backoff = checked(
            backoff, multiplier, max_backoff, jitter
        )
        self._jitter = jitter
        self._schedule = schedule_of(jitter, self._backoff, self._multiplier, self._max_backoff)
        self._types, self._retry_open, self._predicate = _retry_on_of(retry_on)
        self._budget = budget
        self._name = name
        self._clock = clock
        self._sleep = sleep_of(clock, sleep)
        self._asleep = async_sleep_of(clock, asleep)
        self._rng = rng if rng is not None else Random()
        super().__init__(listeners)

    name: ReadOnly[str] = ReadOnly("_name", "The name used in events.")
    retries: ReadOnly[int] = ReadOnly("_retries", "Retries after the first call (0: never retry).")
    budget: ReadOnly[RetryBudget | None] = ReadOnly(
        "_budget", "The shared budget retries draw from, if any."
    )
    events: ReadOnly[Emitter] = ReadOnly(
        "_events", "Listeners receiving ``RetryScheduled`` and ``RetryGaveUp``."
    )
    sleep: ReadOnly[Sleep] = ReadOnly(
        "_sleep", "The blocking sleep this policy waits with (for drivers that inline the loop)."
    )
    asleep: ReadOnly[AsyncSleep] = ReadOnly(
        "_asleep", "The awaitable sleep this policy waits with (for drivers that inline the loop)."
    )

    # -- the decision ---------------------------------------------------------------------

    def begin(self) -> None:
        """Start one call: deposit its first attempt in the budget (nothing without one)."""
        if self._budget is not None:
            self._budget.deposit()

    def next_delay(self, attempt: int, exc: BaseException, prev_delay: float = 0.0) -> float:
        """Seconds to wait before retrying, after retry number ``attempt`` (0: the first call)
        failed with ``exc``; ``prev_delay`` is the delay returned last time (0.0 at first).

        Raises ``exc`` to give up (not retryable, out of retries, deadline too close) or
        ``BudgetExhausted`` from ``exc`` when the budget refuses.
        """
        if not self._retryable(exc):
            self._gave_up(attempt, "not_retryable", exc)
            raise exc
        if attempt >= self._retries:
            self._gave_up(attempt, "retries", exc)
            raise exc
        hint = getattr(exc, "retry_after", None)
        if isinstance(hint, int | float) and not isinstance(hint, bool) and math.isfinite(hint):
            delay = float(hint) if hint > 0 else 0.0
        else:
            delay = self._schedule(attempt, prev_delay, self._rng)
        left = remaining()
        if left is not None and delay >= left:
            self._gave_up(attempt, "deadline", exc)
            raise exc
        budget = self._budget
        if budget is not None and not budget.try_withdraw():
            self._gave_up(attempt, "budget", exc)
            raise BudgetExhausted(budget.name, budget.ratio, budget.min_per_second) from exc
        if self._events:
            at = self._clock()
            error = type(exc).__name__
            self._emit(
                RetryScheduled, self._name, at, attempt=attempt + 1, delay=delay, error=error
            )
        return delay

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, Exception):
            return False
        if self._predicate is not None:
            return bool(self._predicate(exc))
        if isinstance(exc, CircuitOpenError) and not self._retry_open:
            return False
        return isinstance(exc, self._types)

    def _gave_up(self, attempt: int, reason: str, exc: BaseException) -> None:
        if self._events:
            at = self._clock()
            error = type(exc).__name__
            self._emit(
                RetryGaveUp, self._name, at, attempts=attempt + 1, reason=reason, error=error
            )

    # -- the drivers ----------------------------------------------------------------------
    # The success path is: deposit, call, return. Everything else is in ``retry_from``,
    # entered outside the ``except`` block so later errors do not chain onto the first.

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)``, retrying failures as configured; blocks while waiting."""
        if self._budget is not None:
            self._budget.deposit()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            error = exc
        return self.retry_from(error, fn, args, kwargs)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)``, retrying failures as configured, without blocking."""
        if self._budget is not None:
            self._budget.deposit()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            error = exc
        return await self.aretry_from(error, fn, args, kwargs)

    def retry_from(
        self, exc: Exception, fn: Callable[..., T], args: Any, kwargs: dict[str, Any]
    ) -> T:
        """The rest of a call whose first attempt failed with ``exc``: wait, call
        ``fn(*args, **kwargs)`` again, until it succeeds or the policy gives up. The first
        attempt is the caller's (``begin()`` first): ``call``, the decorator and ``Pipeline``
        make it inline, so a call that succeeds never enters this loop."""
        sleep = self._sleep
        attempt = 0
        delay = 0.0
        while True:
            delay = self.next_delay(attempt, exc, delay)
            sleep(delay)
            attempt += 1
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                exc = e

    async def aretry_from(
        self, exc: Exception, fn: Callable[..., Awaitable[T]], args: Any, kwargs: dict[str, Any]
    ) -> T:
        """``retry_from`` for a coroutine function, waiting without blocking."""
        asleep = self._asleep
        attempt = 0
        delay = 0.0
        while True:
            delay = self.next_delay(attempt, exc, delay)
            await asleep(delay)
            attempt += 1
            try:
                return await fn(*args, **kwargs)
            except Exception as e:
                exc = e

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a ``def`` or ``async def`` so every call goes through this policy."""
        budget = self._budget
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)
            aloop = self.aretry_from

            @functools.wraps(fn)
            async def async_retrying(*args: Any, **kwargs: Any) -> Any:
                if budget is not None:
                    budget.deposit()
                try:
                    return await afn(*args, **kwargs)
                except Exception as exc:
                    error = exc
                return await aloop(error, afn, args, kwargs)

            return cast(Callable[P, T], async_retrying)

        loop = self.retry_from

        @functools.wraps(fn)
        def retrying(*args: P.args, **kwargs: P.kwargs) -> T:
            if budget is not None:
                budget.deposit()
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                error = exc
            return loop(error, fn, args, kwargs)

        return retrying

    def describe(self) -> dict[str, object]:
        """The settings, for ``Pipeline.describe()`` and logs."""
        description = described(self._kind, self._name, self, _DESCRIBED)
        description["budget"] = None if self._budget is None else self._budget.describe()
        return description

    def __repr__(self) -> str:
        return (
            f"Retry(retries={self._retries!r}, backoff={self._backoff!r}, "
            f"multiplier={self._multiplier!r}, max_backoff={self._max_backoff!r}, "
            f"jitter={self._jitter!r}, name={self._name!r})"
        )
