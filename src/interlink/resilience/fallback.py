"""Fallback: answer a failed call from somewhere else, so the user sees yesterday's menu rather
than an error page.

Sources, tried in this order (the first one that applies answers):

1. ``cache``: the last successful result, when ``cache_last_success=True`` and one is stored
   (and, with ``max_age``, no older than that many seconds);
2. ``handler``: ``handler(error)`` computes an answer (may be async for ``acall``/``arecover``);
3. ``value``: a fixed answer.

``handler`` and ``value`` are exclusive (the handler would always answer first, so the value could
never be used). When no source applies, the original error propagates unchanged. ``on`` says
which errors may fall back: exception types or a predicate; ``CancelledError``,
``KeyboardInterrupt`` and ``SystemExit`` never do, as they are not ``Exception`` subclasses.

The cache holds one value, whatever the arguments were: use one fallback per resource.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, ParamSpec, TypeVar, cast

from interlink.clock import Clock
from interlink.resilience._decorate import through
from interlink.resilience._validate import positive
from interlink.resilience.events import FallbackUsed, Listener, Observed

__all__ = ["Fallback"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()

ErrorFilter = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]


def _error_types(on: object) -> tuple[type[Exception], ...] | None:
    """``on`` as a tuple of types, None when it is a predicate; ValueError when neither."""
    types = on if isinstance(on, tuple) else (on,)
    if types and all(isinstance(t, type) and issubclass(t, Exception) for t in types):
        return types
    if not isinstance(on, tuple | type) and callable(on):
        return None
    raise ValueError(f"'on' must be an Exception subclass, a tuple of them, or a predicate: {on!r}")


class Fallback(Observed):
    """Turn the failure of a call into an answer from the cache, a handler or a fixed value.

    Use ``call``/``acall``, ``@fallback`` on a def or async def, or the primitives the pipeline
    uses: ``remember(result)`` after a success, ``recover(error)``/``arecover(error)`` after a
    failure. Listeners get ``FallbackUsed`` with the source that answered.
    """

    __slots__ = (
        "_async_handler",
        "_cache",
        "_clock",
        "_last",
        "_predicate",
        "_types",
        "handler",
        "max_age",
        "name",
        "value",
    )

    _kind = "fallback"

    def __init__(
        self,
        value: object = _MISSING,
        *,
        handler: Callable[[Exception], object] | None = None,
        cache_last_success: bool = False,
        on: ErrorFilter = (Exception,),
        name: str = "fallback",
        clock: Clock = time.monotonic,
        max_age: float | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if handler is not None and not callable(handler):
            raise ValueError(f"'handler' must be callable: {handler!r}")
        if handler is not None and value is not _MISSING:
            raise ValueError(
                f"'value' and 'handler' are exclusive (the handler always answers first): {value!r}"
            )
        if handler is None and value is _MISSING and not cache_last_success:
            raise ValueError(
                "'value', 'handler' or 'cache_last_success' must be given: nothing to fall back to"
            )
        if max_age is not None:
            if not cache_last_success:
                raise ValueError(
                    f"'max_age' needs 'cache_last_success=True' (it ages cached results): "
                    f"{max_age!r}"
                )
            max_age = positive("max_age", max_age)
        self._types = _error_types(on)
        self._predicate = None if self._types is not None else cast(Callable[[Exception], bool], on)
        self.value = value
        self.handler = handler
        self._async_handler = handler is not None and inspect.iscoroutinefunction(handler)
        self._cache = bool(cache_last_success)
        self.max_age = max_age
        self.name = name
        self._clock = clock
        super().__init__(listeners)
        # (result, clock reading) in one tuple, so a reader never pairs a value with the wrong
        # age; replacing it is one atomic store.
        self._last: tuple[object, float] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def last_success(self) -> tuple[object, float] | None:
        """The cached result and its age in seconds, or None when nothing is cached."""
        last = self._last
        return None if last is None else (last[0], self._clock() - last[1])

    def describe(self) -> dict[str, object]:
        """The configuration, for tests and the pipeline's ``describe()``."""
        sources = ["cache"] if self._cache else []
        if self.handler is not None:
            sources.append("handler")
        if self.value is not _MISSING:
            sources.append("value")
        return {
            "policy": "fallback",
            "name": self.name,
            "sources": sources,
            "max_age": self.max_age,
            "on": self._types if self._types is not None else self._predicate,
        }

    def __repr__(self) -> str:
        return f"Fallback({self.name!r}, sources={self.describe()['sources']})"

    # -- primitives --------------------------------------------------------------------------

    def handles(self, error: BaseException) -> bool:
        """Whether ``error`` may fall back (per ``on``; never a non-``Exception``)."""
        if not isinstance(error, Exception):
            return False
        if self._types is not None:
            return isinstance(error, self._types)
        return bool(cast(Callable[[Exception], bool], self._predicate)(error))

    def remember(self, result: object) -> None:
        """Store ``result`` as the last success (when caching; otherwise a no-op)."""
        if self._cache:
            self._last = (result, self._clock())

    def recover(self, error: BaseException) -> Any:
        """The fallback answer for ``error``; re-raises ``error`` when no source applies.

        Raises ``TypeError`` (from ``error``) when the handler is async: use ``arecover``.
        """
        if isinstance(error, Exception) and self.handles(error):
            result = self._answer(error)
            if result is not _MISSING:
                return result
        raise error

    async def arecover(self, error: BaseException) -> Any:
        """``recover`` for async code: the handler may be sync or async."""
        if isinstance(error, Exception) and self.handles(error):
            result = await self._aanswer(error)
            if result is not _MISSING:
                return result
        raise error

    # -- drivers -----------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)``; on a handled error return the fallback answer."""
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            return cast(R, self.recover(exc))
        self.remember(result)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)``; on a handled error return the fallback answer."""
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            return cast(R, await self.arecover(exc))
        self.remember(result)
        return result

    def __call__(self, fn: F) -> F:
        """Decorate a def or an async def so that its handled errors fall back."""
        return through(fn, self.call, self.acall)

    # -- sources -----------------------------------------------------------------------------

    def _cached(self) -> object:
        last = self._last  # one read: value and timestamp always belong together
        if last is not None and (self.max_age is None or self._clock() - last[1] <= self.max_age):
            return last[0]
        return _MISSING

    def _answer(self, error: Exception) -> object:
        """The first source's answer, or _MISSING when none applies."""
        result = self._cached()
        if result is not _MISSING:
            self._used("cache", error)
            return result
        if self.handler is not None:
            if self._async_handler:
                raise TypeError(
                    f"fallback '{self.name}' has an async handler: use acall()/arecover()"
                ) from error
            result = self.handler(error)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never to be awaited: close it, no "never awaited" warning
                raise TypeError(
                    f"fallback '{self.name}' handler returned an awaitable: use acall()/arecover()"
                ) from error
            self._used("handler", error)
            return result
        if self.value is not _MISSING:
            self._used("value", error)
        return self.value

    async def _aanswer(self, error: Exception) -> object:
        result = self._cached()
        if result is not _MISSING:
            self._used("cache", error)
            return result
        if self.handler is not None:
            result = self.handler(error)
            if inspect.isawaitable(result):
                result = await result
            self._used("handler", error)
            return result
        if self.value is not _MISSING:
            self._used("value", error)
        return self.value

    def _used(self, source: str, error: BaseException) -> None:
        if self._events:
            at = self._clock()
            self._emit(FallbackUsed, self.name, at, source=source, error=type(error).__name__)
