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

The sync and async drivers run the policies' state machines (``acquire``/``on_success``,
``next_delay``, ``enter``/``leave``) in one flat loop instead of nesting ``policy.call`` inside
``policy.call``: each Python frame costs about as much as a whole policy's decision, and a
user-facing call should not pay for the composition.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

from interlink.resilience._pipeline_code import build_call
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


class Pipeline:
    """Run a call through any subset of the policies, always in the order of ``ORDER``.

    Pass policies positionally in any order (``Pipeline(breaker, retry, fallback)``) or by
    keyword; at most one of each kind.
    """

    __slots__ = (
        "_breaker",
        "_bulkhead",
        "_fallback",
        "_free",
        "_hedge",
        "_rate_limiter",
        "_retry",
        "_timeout",
        "acall",
        "call",
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
        self._free = None if self._bulkhead is None else self._bulkhead._free
        self.name = name
        #: ``pipeline.call(fn, *args, **kwargs)`` runs ``fn`` through every policy. It is an
        #: attribute holding a function generated for exactly these policies (see
        #: ``_pipeline_sync``), so calling it costs one Python frame.
        self.call: Callable[..., Any] = (
            self._no_sync if self._hedge is not None else self._build(None, is_async=False)
        )
        #: ``await pipeline.acall(fn, *args, **kwargs)``: the async twin of ``call``.
        self.acall: Callable[..., Awaitable[Any]] = (
            self._acall_hedged if self._hedge is not None else self._build(None, is_async=True)
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

    def _build(self, fn: Callable[..., Any] | None, *, is_async: bool) -> Callable[..., Any]:
        timeout = self._timeout
        threaded = not is_async and timeout is not None and timeout.strategy == "thread"
        inner = build_call(
            name=self.name,
            is_async=is_async,
            fallback=None if threaded else self._fallback,
            timeout=None if threaded else timeout,
            retry=self._retry,
            breaker=self._breaker,
            rate_limiter=self._rate_limiter,
            bulkhead=self._bulkhead,
            fn=fn,
        )
        if not threaded:
            return inner
        # strategy="thread": the whole attempt loop runs in the timeout's worker thread, so the
        # caller stops waiting at the deadline; the fallback stays outside, in the caller.
        assert timeout is not None
        return _threaded(timeout, self._fallback, inner, fn)

    def _no_sync(self, *args: object, **kwargs: object) -> Any:
        raise TypeError(f"pipeline '{self.name}' has a hedge: hedging needs acall()")

    # ------------------------------------------------------------------ async

    async def _acall_hedged(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """``acall`` of a pipeline with a hedge: attempts run as tasks, so nothing is inlined."""
        fallback = self._fallback
        timeout = self._timeout
        try:
            if timeout is not None:
                result = await timeout.acall(self._attempts, fn, args, kwargs)
            else:
                result = await self._attempts(fn, args, kwargs)
        except BaseException as exc:
            if fallback is None:
                raise
            return await fallback.arecover(exc)  # type: ignore[no-any-return]
        if fallback is not None:
            fallback.remember(result)
        return result

    async def _attempts(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        retry = self._retry
        hedge = self._hedge
        if retry is not None:
            retry.begin()
        attempt = 0
        delay = 0.0
        while True:
            try:
                if hedge is not None:
                    return await hedge.acall(self._one, fn, args, kwargs)
                return await self._one(fn, args, kwargs)
            except BaseException as exc:
                if retry is None:
                    raise
                delay = retry.next_delay(attempt, exc, delay)
                await retry.asleep(delay)
                attempt += 1

    async def _one(self, fn: Callable[..., Awaitable[T]], args: Any, kwargs: Any) -> T:
        """One attempt through breaker, rate limiter and bulkhead."""
        breaker = self._breaker
        limiter = self._rate_limiter
        bulkhead = self._bulkhead
        permit = 0
        start = -1.0
        if breaker is not None:
            permit = breaker._g
            if permit & 15:
                permit = breaker.acquire()
                start = breaker._clock()
        try:
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
                breaker.on_error(permit, exc, None if start < 0 else breaker._clock() - start)
            raise
        finally:
            if bulkhead is not None:
                bulkhead.leave()
        if breaker is not None:
            if start < 0:
                n = next(breaker._succ_counter)
                if not (n & breaker._mask):
                    breaker._tick_success(n + 1)
            else:
                breaker.on_success(permit, breaker._clock() - start)
        return result

    # ------------------------------------------------------------------ decorator

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a ``def`` or an ``async def``."""
        if inspect.iscoroutinefunction(fn):
            if self._hedge is None:
                return functools.wraps(fn)(self._build(fn, is_async=True))

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self._acall_hedged(fn, *args, **kwargs)

            return async_wrapper

        if self._hedge is not None:
            raise TypeError(f"pipeline '{self.name}' has a hedge: it can only wrap an async def")
        # a function generated for this fn: no extra frame between the caller and the policies
        return functools.wraps(fn)(self._build(fn, is_async=False))

    def __repr__(self) -> str:
        kinds = ", ".join(k for k in ORDER if getattr(self, f"_{k}") is not None)
        return f"Pipeline({self.name!r}: {kinds})"


def _threaded(
    timeout: Timeout,
    fallback: Fallback | None,
    inner: Callable[..., Any],
    fn: Callable[..., Any] | None,
) -> Callable[..., Any]:
    """``call`` for a sync pipeline whose timeout runs calls in a worker thread."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = timeout.call(inner, *args, **kwargs)
        except BaseException as exc:
            if fallback is None:
                raise
            return fallback.recover(exc)
        if fallback is not None:
            fallback.remember(result)
        return result

    return call


def pipeline_of(policies: Iterable[object], *, name: str = "pipeline") -> Pipeline:
    """A pipeline from an iterable of policies (config loaders build lists)."""
    return Pipeline(*policies, name=name)
