"""The decorator form every policy offers: ``@policy`` on a ``def`` or an ``async def``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

__all__ = ["through"]

F = TypeVar("F", bound=Callable[..., Any])


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
