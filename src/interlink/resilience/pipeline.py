"""Compose policies in one fixed, documented order, behind one call site.

The order, outermost first, and why::

    fallback      last: it answers when everything inside gave up (a cached good menu)
    timeout       the whole call's budget, retries included; installs the deadline
    retry         each attempt goes through everything below it again
    hedge         (async) parallel attempts, each through the breaker and bulkhead
    breaker       sees one outcome per attempt; never sees its own rejections
    rate_limiter  rejects before a bulkhead slot is taken
    bulkhead      holds a slot only while the downstream is really being called
    -> the call

An inner rejection (``RateLimited``, ``BulkheadFull``) releases the breaker's permit instead of
counting as a failure: the downstream was never called, so it says nothing about its health.

The drivers are written out once for sync (``call``) and once for async (``acall``), each in
three layers that mirror the order: the outer call (fallback, then the timeout's ``run``/``arun``
around the rest), the attempts (the retry's first attempt inline, ``Retry.retry_from`` for the
rest), and one attempt (breaker permit, rate limiter, bulkhead, the call). Each policy is asked
through its public protocol (``acquire``/``on_success``/``on_error``, ``begin``/``retry_from``,
``try_enter``/``leave``, ...); nothing here decides anything itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from interlink.resilience._decorate import Decorating
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.fallback import Fallback
from interlink.resilience.hedge import Hedge
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout

__all__ = ["ORDER", "Pipeline"]

P = ParamSpec("P")
T = TypeVar("T")

ORDER = ("fallback", "timeout", "retry", "hedge", "breaker", "rate_limiter", "bulkhead")
_KINDS: tuple[tuple[str, type], ...] = (
    ("fallback", Fallback),
    ("timeout", Timeout),
    ("retry", Retry),
    ("hedge", Hedge),
    ("breaker", CircuitBreaker),
    ("rate_limiter", RateLimiter),
    ("bulkhead", Bulkhead),
)


class Pipeline(Decorating):
    """Run a call through any subset of the policies, always in the order of ``ORDER``.

    Pass policies positionally in any order (``Pipeline(breaker, retry, fallback)``) or by
    keyword; at most one of each kind.
    """

    __slots__ = (
        "_abody",
        "_begin",
        "_breaker",
        "_bulkhead",
        "_fallback",
        "_hedge",
        "_rate_limiter",
        "_retry",
        "_timed",
        "_timeout",
        "name",
    )

    def __init__(
        self,
        *policies: object,
        fallback: Fallback | None = None,
        timeout: Timeout | None = None,
        retry: Retry | None = None,
        hedge: Hedge | None = None,
        breaker: CircuitBreaker | None = None,
        rate_limiter: RateLimiter | None = None,
        bulkhead: Bulkhead | None = None,
        name: str = "pipeline",
    ) -> None:
        slots: dict[str, object] = {
            "fallback": fallback,
            "timeout": timeout,
            "retry": retry,
            "hedge": hedge,
            "breaker": breaker,
            "rate_limiter": rate_limiter,
            "bulkhead": bulkhead,
        }
        for kind, cls in _KINDS:
            given = slots[kind]
            if given is not None and not isinstance(given, cls):
                raise TypeError(f"'{kind}' must be a {cls.__name__}: {given!r}")
        for policy in policies:
            for kind, cls in _KINDS:
                if isinstance(policy, cls):
                    if slots[kind] is not None:
                        raise ValueError(f"a pipeline takes one {kind}; got a second: {policy!r}")
                    slots[kind] = policy
                    break
            else:
                raise TypeError(f"not an interlink policy: {policy!r}")
        self._fallback: Fallback | None = slots["fallback"]  # type: ignore[assignment]
        self._timeout: Timeout | None = slots["timeout"]  # type: ignore[assignment]
        self._retry: Retry | None = slots["retry"]  # type: ignore[assignment]
        self._hedge: Hedge | None = slots["hedge"]  # type: ignore[assignment]
        self._breaker: CircuitBreaker | None = slots["breaker"]  # type: ignore[assignment]
        self._rate_limiter: RateLimiter | None = slots["rate_limiter"]  # type: ignore[assignment]
        self._bulkhead: Bulkhead | None = slots["bulkhead"]  # type: ignore[assignment]
        #: read the breaker's clock around each attempt only when it times calls
        self._timed = self._breaker is not None and self._breaker.times_calls
        #: ``Retry.begin()``, when it has anything to do (a budget to deposit in)
        self._begin = (
            None if self._retry is None or self._retry.budget is None else self._retry.begin
        )
        self.name = name
        #: the async attempts, bound once: ``acall`` then makes no method object per call
        self._abody: Callable[..., Coroutine[Any, Any, Any]] = (
            self._aonce if self._hedge is None else self._ahedged
        )

    # ------------------------------------------------------------------ inspection

    @property
    def policies(self) -> tuple[object, ...]:
        """The policies present, outermost first."""
        return tuple(p for p in (getattr(self, f"_{kind}") for kind in ORDER) if p is not None)

    def describe(self) -> list[dict[str, object]]:
        """Each policy's settings, outermost first: what tests and logs assert on."""
        return [p.describe() for p in self.policies]  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ sync

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through every policy of the pipeline."""
        if self._hedge is not None:
            raise TypeError(f"pipeline '{self.name}' has a hedge: hedging needs acall()")
        fallback = self._fallback
        timeout = self._timeout
        try:
            if timeout is None:
                result = self._once(fn, args, kwargs)
            else:
                result = timeout.run(self._once, fn, args, kwargs)
        except BaseException as exc:
            if fallback is None:
                raise
            return fallback.recover(exc)  # type: ignore[no-any-return]
        if fallback is not None:
            fallback.remember(result)
        return result

    def _once(self, fn: Callable[..., T], args: Any, kwargs: Any, first: bool = True) -> T:
        """One attempt through breaker, rate limiter and bulkhead. The ``first`` attempt of a
        call goes on, when it fails, into the retry's loop, which calls this for each retry."""
        if first and self._begin is not None:
            self._begin()
        breaker = self._breaker
        bulkhead = self._bulkhead
        try:
            permit = 0
            start = 0.0
            if breaker is not None:
                permit = breaker.acquire()
                if self._timed:
                    start = breaker.clock()
            try:
                limiter = self._rate_limiter
                if limiter is not None:
                    limiter.acquire(limiter.timeout)
                if bulkhead is not None:
                    bulkhead.enter()
            except BaseException:
                if breaker is not None:
                    breaker.release(permit)
                raise
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if breaker is not None:
                    breaker.on_error(permit, exc, breaker.clock() - start if self._timed else None)
                raise
            finally:
                if bulkhead is not None:
                    bulkhead.leave()
            if breaker is not None:
                breaker.on_success(permit, breaker.clock() - start if self._timed else None)
            return result
        except Exception as exc:
            retry = self._retry
            if retry is None or not first:
                raise
            error = exc
        again: T = retry.retry_from(error, self._once, (fn, args, kwargs, False), {})
        return again

    # ------------------------------------------------------------------ async

    def acall(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """Await ``fn(*args, **kwargs)`` through every policy of the pipeline.

        A plain method returning the coroutine of the outermost policy present (the fallback's,
        the timeout's or the attempts'), so the pipeline adds no coroutine frame of its own to
        each call."""
        if self._fallback is not None:
            return self._arecovered(fn, args, kwargs)
        if self._timeout is not None:
            return self._timeout.arun(self._abody, fn, args, kwargs)
        return self._abody(fn, args, kwargs)

    async def _arecovered(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        """The fallback around the timeout and the attempts."""
        fallback = self._fallback
        timeout = self._timeout
        body = self._abody
        assert fallback is not None  # only chosen when there is one
        result: T
        try:
            if timeout is None:
                result = await body(fn, args, kwargs)
            else:
                result = await timeout.arun(body, fn, args, kwargs)
        except BaseException as exc:
            return await fallback.arecover(exc)  # type: ignore[no-any-return]
        fallback.remember(result)
        return result

    async def _ahedged(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        """The attempts of a pipeline with a hedge: each is a hedged race of ``_aonce`` calls."""
        hedge = self._hedge
        retry = self._retry
        assert hedge is not None  # only chosen when there is one
        if retry is not None and self._begin is not None:
            self._begin()
        try:
            return await hedge.acall(self._aonce, fn, args, kwargs, False)
        except Exception as exc:
            if retry is None:
                raise
            error = exc
        again: T = await retry.aretry_from(
            error, hedge.acall, (self._aonce, fn, args, kwargs, False), {}
        )
        return again

    async def _aonce(
        self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any, first: bool = True
    ) -> T:
        """``_once`` for a coroutine function: waits for the rate limiter and the bulkhead
        without blocking the loop."""
        if first and self._begin is not None:
            self._begin()
        breaker = self._breaker
        bulkhead = self._bulkhead
        try:
            permit = 0
            start = 0.0
            if breaker is not None:
                permit = breaker.acquire()
                if self._timed:
                    start = breaker.clock()
            try:
                limiter = self._rate_limiter
                if limiter is not None and not limiter.try_acquire():
                    await limiter.aacquire(limiter.timeout)
                if bulkhead is not None and not bulkhead.try_enter():
                    await bulkhead.aenter()
            except BaseException:
                if breaker is not None:
                    breaker.release(permit)
                raise
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                if breaker is not None:
                    breaker.on_error(permit, exc, breaker.clock() - start if self._timed else None)
                raise
            finally:
                if bulkhead is not None:
                    bulkhead.leave()
            if breaker is not None:
                breaker.on_success(permit, breaker.clock() - start if self._timed else None)
            return result
        except Exception as exc:
            retry = self._retry
            if retry is None or not first:
                raise
            error = exc
        again: T = await retry.aretry_from(error, self._aonce, (fn, args, kwargs, False), {})
        return again

    # ------------------------------------------------------------------ decorator

    def _check_decorated(self, fn: Callable[..., Any]) -> None:
        """A pipeline with a hedge runs only coroutine functions."""
        if self._hedge is not None and not inspect.iscoroutinefunction(fn):
            raise TypeError(f"pipeline '{self.name}' has a hedge: it can only wrap an async def")

    def __repr__(self) -> str:
        kinds = ", ".join(k for k in ORDER if getattr(self, f"_{k}") is not None)
        return f"Pipeline({self.name!r}: {kinds})"
