"""The decorator form every policy offers: ``@policy`` on a ``def`` or an ``async def``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload

__all__ = ["Decorating", "through"]

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
T = TypeVar("T")


def through(
    fn: F,
    call: Callable[..., Any],
    acall: Callable[..., Awaitable[Any]],
) -> F:
    """``fn`` wrapped so that each call runs as ``call(fn, *args, **kwargs)``, or, for a
    coroutine function, ``await acall(fn, *args, **kwargs)``."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await acall(fn, *args, **kwargs)

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    return cast(F, wrapper)


class Decorating:
    """``@policy`` on a ``def`` or an ``async def``, typed: the result keeps ``fn``'s signature
    and each call goes through the policy's ``call``/``acall``."""

    __slots__ = ()

    call: Callable[..., Any]
    acall: Callable[..., Awaitable[Any]]

    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a ``def`` or an ``async def``: each call goes through ``call``/``acall``."""
        self._check_decorated(fn)
        return through(fn, self.call, self.acall)

    def _check_decorated(self, fn: Callable[..., Any]) -> None:
        """Raise for a function this policy cannot run; any will do unless a policy says."""
