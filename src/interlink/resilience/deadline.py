"""Deadline budgets that ride in the context and can only shrink along a call chain.

A deadline is an absolute reading of the clock that set it, kept in a ``contextvars.ContextVar``
so that it follows the request through ``await`` and into tasks without being passed as an
argument. ``with deadline(2.0):`` inside a deadline with 0.5 s left keeps 0.5 s: an inner layer
may be stricter than its caller, never more generous. Transports read ``remaining()`` to set
their own timeouts and to tell the next hop how long it has.

The context holds a plain ``(at, clock)`` tuple rather than an object: setting a deadline on every
call must be cheap, and a tuple is the cheapest thing to build. Pipelines go further and keep
one mutable ``TaskDeadline`` per asyncio task (per thread, for sync calls) in the context,
rewriting its first slot per call instead of setting the variable at all (see ``_watchdog.py``).
Both index alike, ``[0]`` the deadline and ``[1]`` its clock, so readers need not tell them apart;
a task deadline with nothing in force holds ``math.inf``.
"""

from __future__ import annotations

import math
import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from interlink.clock import Clock
from interlink.resilience._validate import non_negative

__all__ = [
    "Deadline",
    "current_deadline",
    "deadline",
    "enter_thread_deadline",
    "expired",
    "remaining",
]

_Pair = tuple[float, Clock]
_INF = math.inf


#: The deadline of one asyncio task (or of one thread's sync calls), rewritten in place by the
#: pipelines it runs. A plain list, not a class: the interpreter's fast paths for reading and
#: writing list items apply only to ``list`` itself, and the context holds nothing else that is
#: a list. ``AT`` is the deadline
#: in force (what ``remaining()`` reads), ``BASE`` the one the task inherited (never enforced by
#: cancelling, as ``deadline()`` never cancels); a pipeline call in progress holds ``AT`` below
#: ``BASE``.
TaskDeadline = list[Any]

AT, CLOCK, TASK, FLOOR, FIRED, THREAD, LOOP, SLOT, WATCHDOG, BASE = range(10)


def enter_thread_deadline(parent: object) -> TaskDeadline | None:
    """Install a deadline record for sync pipelines on this thread, inheriting ``parent``; None
    when ``parent`` is on another clock (the caller takes the per-call path then).

    Sync calls only save and restore ``AT`` around themselves, so any code on this thread may
    share the record: a sync call cannot yield, and what runs inside it nests. ``TASK`` is
    False, which no async pipeline takes for a task of its own. Like the async records, it
    stays in the context after the call, reading as ``parent`` while idle.
    """
    base = inherited(parent)
    if base is None:
        return None
    return install_frame(base, False, threading.get_ident(), None, None)


def install_frame(base: float, task: Any, thread: int, loop: Any, watchdog: Any) -> TaskDeadline:
    """A new record inheriting ``base``, unarmed and with no call in progress, set as this
    context's deadline."""
    frame = [base, time.monotonic, task, _INF, False, thread, loop, 0, watchdog, base]
    _CURRENT.set(frame)
    return frame


def inherited(parent: object) -> float | None:
    """The monotonic deadline ``parent`` (the context's value) holds, ``inf`` for none; None
    when it is on another clock."""
    if parent is None:
        return _INF
    if parent[1] is time.monotonic:  # type: ignore[index]
        return parent[0]  # type: ignore[index,no-any-return]
    return None


# The one piece of module state the core has: a ContextVar is per task and per thread by
# design, so it carries the request's deadline without being a global anybody shares.
_CURRENT: ContextVar[_Pair | TaskDeadline | None] = ContextVar("interlink_deadline", default=None)


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


def current_deadline() -> Deadline | None:
    """The deadline in force in this context, or None."""
    pair = _CURRENT.get()
    return None if pair is None or pair[0] == _INF else Deadline(pair[0], pair[1])


def remaining() -> float | None:
    """Seconds left before the current deadline (never negative); None outside any deadline."""
    pair = _CURRENT.get()
    if pair is None or pair[0] == _INF:
        return None
    left = pair[0] - pair[1]()
    return left if left > 0.0 else 0.0


def expired() -> bool:
    """True when a deadline is in force and has passed."""
    pair = _CURRENT.get()
    return pair is not None and pair[1]() >= pair[0]


def shrink_to(seconds: float, clock: Clock) -> Token[_Pair | TaskDeadline | None]:
    """Install a deadline ``seconds`` from now unless the current one is sooner; returns the
    token for ``_CURRENT.reset``. The building block of ``deadline`` and ``Timeout``."""
    at = clock() + seconds
    parent = _CURRENT.get()
    if parent is not None:
        if parent[1] is clock:
            if parent[0] <= at:
                return _CURRENT.set(parent)
        elif parent[0] - parent[1]() <= seconds:  # another clock: compare what is left
            return _CURRENT.set(parent)
    return _CURRENT.set((at, clock))


def reset(token: Token[_Pair | TaskDeadline | None]) -> None:
    """Restore the deadline that was in force before ``shrink_to``."""
    _CURRENT.reset(token)


class deadline:  # lower case: used like a function, ``with deadline(2):``
    """Set a deadline ``seconds`` from now for the block; nested deadlines only shrink.

    Works as ``with`` and ``async with``; the block gets the ``Deadline`` in force (None when
    ``seconds`` is None and there was none). ``seconds=None`` keeps the current deadline, so a
    caller can pass an optional budget straight through. One instance, one block at a time.
    """

    __slots__ = ("_clock", "_seconds", "_token")

    def __init__(self, seconds: float | None, *, clock: Clock = time.monotonic) -> None:
        self._seconds = None if seconds is None else non_negative("seconds", seconds)
        self._clock = clock
        self._token: Token[_Pair | TaskDeadline | None] | None = None

    def _enter(self) -> Deadline | None:
        if self._seconds is not None:
            self._token = shrink_to(self._seconds, self._clock)
        return current_deadline()

    def _exit(self) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None

    def __enter__(self) -> Deadline | None:
        return self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()

    async def __aenter__(self) -> Deadline | None:
        return self._enter()

    async def __aexit__(self, *exc: object) -> None:
        self._exit()


class deadline_at:  # lower case: a context manager used like a function
    """Install an absolute deadline (e.g. one read from an incoming request header), shrunk
    to the current one if that is sooner."""

    __slots__ = ("_at", "_token")

    def __init__(self, at: Deadline) -> None:
        self._at = at
        self._token: Token[_Pair | TaskDeadline | None] | None = None

    def __enter__(self) -> Deadline | None:
        left = self._at.at - self._at.clock()
        self._token = shrink_to(max(left, 0.0), self._at.clock)
        return current_deadline()

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
