"""``@breaker``: the wrapper forwards every argument as given and keeps the function's metadata."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from interlink import CircuitBreaker


def every_kind(a: int, b: int = 2, /, c: int = 3, *, d: int, e: int = 5) -> tuple[int, ...]:
    return (a, b, c, d, e)


def test_every_parameter_kind_is_forwarded_as_given() -> None:
    """Positional-only, defaults, keyword-only: the wrapped call sees what the caller passed."""
    wrapped = CircuitBreaker("sig")(every_kind)
    assert wrapped(1, d=4) == (1, 2, 3, 4, 5)
    assert wrapped(1, 20, 30, d=40, e=50) == (1, 20, 30, 40, 50)
    assert wrapped(1, c=30, d=4) == (1, 2, 30, 4, 5)


def test_bad_arguments_fail_as_the_function_would_and_name_it() -> None:
    """A wrong call raises the TypeError the function itself raises, naming it."""
    breaker = CircuitBreaker("sig")
    wrapped = breaker(every_kind)
    with pytest.raises(TypeError, match="every_kind"):
        wrapped(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="every_kind"):
        wrapped(a=1, d=4)  # type: ignore[call-arg]


def test_methods_and_async_functions() -> None:
    """``self`` is a parameter like any other; async functions get an async wrapper."""
    breaker = CircuitBreaker("sig")

    class Menu:
        def __init__(self) -> None:
            self.items = ["soup"]

        @breaker
        def first(self, default: str = "none") -> str:
            return self.items[0] if self.items else default

        @breaker
        async def count(self, *, extra: int = 0) -> int:
            return len(self.items) + extra

    menu = Menu()
    assert menu.first() == "soup"
    assert asyncio.run(menu.count(extra=2)) == 3
    assert breaker.metrics.successes_total == 2


def test_wrappers_that_change_the_arguments_are_called_as_given() -> None:
    """A functools.wraps wrapper reports its inner function's signature but may accept others:
    the breaker passes the caller's arguments through untouched."""

    def inner(db: str, x: int) -> str:
        return f"{db}:{x}"

    @functools.wraps(inner)
    def injecting(*args: Any, **kwargs: Any) -> str:
        return inner("main", *args, **kwargs)

    assert CircuitBreaker("sig")(injecting)(7) == "main:7"


def test_parameter_names_cannot_shadow_the_wrapper() -> None:
    """Parameters named like builtins the wrapper uses are forwarded untouched."""

    def shadowing(next: int, BaseException: int = 1) -> int:
        if next < 0:
            raise ValueError(next)
        return next + BaseException

    breaker = CircuitBreaker("sig")
    wrapped = breaker(shadowing)
    assert wrapped(2, BaseException=3) == 5
    with pytest.raises(ValueError, match="-1"):
        wrapped(-1)
    assert breaker.metrics.failures_total == 1


def test_metadata_is_the_functions() -> None:
    """The wrapper carries the function's name, docstring and ``__wrapped__``."""
    wrapped = CircuitBreaker("sig")(every_kind)
    assert wrapped.__name__ == "every_kind"
    assert wrapped.__wrapped__ is every_kind  # type: ignore[attr-defined]
