"""Deadline budgets that ride in the context and can only shrink along a call chain.

A deadline is an absolute reading of the clock that was used to set it, kept in a
``contextvars.ContextVar`` so that it follows the request through ``await`` and into tasks
without being passed as an argument. ``with deadline(2.0):`` nested inside a deadline with 0.5 s
left keeps 0.5 s: an inner layer may be stricter than its caller, never more generous. Transports
read ``remaining()`` to set their own timeouts and to tell the next hop how long it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from interlink.clock import Clock
from interlink.resilience._validate import non_negative

__all__ = ["Deadline", "current_deadline", "deadline", "expired", "remaining"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point in time on ``clock``; ``at`` is a reading of that clock."""

    at: float
    clock: Clock = time.monotonic

    def remaining(self) -> float:
        """Seconds left, never negative."""
        left = self.at - self.clock()
        return left if left > 0.0 else 0.0

    @property
    def expired(self) -> bool:
        """True once the clock has reached ``at``."""
        return self.clock() >= self.at


# The one piece of module state the core has: a ContextVar is per-task/per-thread by design,
# so it carries the request's deadline without being a global anybody shares.
_CURRENT: ContextVar[Deadline | None] = ContextVar("interlink_deadline", default=None)


def current_deadline() -> Deadline | None:
    """The deadline in force in this context, or None."""
    return _CURRENT.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (never negative); None outside any deadline."""
    d = _CURRENT.get()
    return None if d is None else d.remaining()


def expired() -> bool:
    """True when a deadline is in force and has passed."""
    d = _CURRENT.get()
    return d is not None and d.expired


class deadline:  # noqa: N801 - used like a function: ``with deadline(2):``
    """Set a deadline ``seconds`` from now for the block; nested deadlines only shrink.

    Works as ``with`` and ``async with``. ``seconds=None`` keeps the current deadline, which
    lets a caller pass an optional budget straight through. Not reentrant: one instance, one
    block at a time.
    """

    __slots__ = ("_clock", "_seconds", "_token", "deadline")

    def __init__(self, seconds: float | None, *, clock: Clock = time.monotonic) -> None:
        self._seconds = None if seconds is None else non_negative("seconds", seconds)
        self._clock = clock
        self._token: object | None = None
        self.deadline: Deadline | None = None

    def _enter(self) -> Deadline | None:
        parent = _CURRENT.get()
        if self._seconds is None:
            self.deadline = parent
            return parent
        mine = Deadline(self._clock() + self._seconds, self._clock)
        if parent is not None and parent.at <= mine.at and parent.clock is mine.clock:
            mine = parent
        self.deadline = mine
        self._token = _CURRENT.set(mine)
        return mine

    def _exit(self) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)  # type: ignore[arg-type]
            self._token = None

    def __enter__(self) -> Deadline | None:
        return self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()

    async def __aenter__(self) -> Deadline | None:
        return self._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._exit()


@contextmanager
def deadline_at(at: Deadline) -> Iterator[Deadline]:
    """Install an already computed deadline (e.g. one read from an incoming request header),
    shrinking it to the current one if that is sooner."""
    parent = _CURRENT.get()
    use = parent if parent is not None and parent.at <= at.at and parent.clock is at.clock else at
    token = _CURRENT.set(use)
    try:
        yield use
    finally:
        _CURRENT.reset(token)
