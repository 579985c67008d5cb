"""Rate limiter: a token bucket that lets ``rate`` calls per second through, in bursts of up to
``burst``, so a caller stays inside a peer's quota instead of being throttled by it.

The bucket refills lazily from the clock on each request: no timer, no background thread. A
caller that is willing to wait *reserves* its tokens before sleeping (the level goes negative,
as in Guava's ``SmoothBursty`` and resilience4j), so later callers queue behind it instead of
taking the tokens it is waiting for, and each waiter sleeps exactly its share of the deficit.
A waiter that is interrupted or cancelled gives its reservation back.

Waits are capped by the ``timeout`` and by the current deadline
(``interlink.resilience.deadline``): if the token would come too late the call is refused at
once with ``RateLimited`` (whose ``retry_after`` says when to come back), and nothing is reserved.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from interlink.clock import AsyncSleep, Clock, Sleep, async_sleep_of, sleep_of
from interlink.errors import RateLimited
from interlink.resilience._decorate import through
from interlink.resilience._validate import described, non_negative, positive, positive_int
from interlink.resilience.deadline import remaining
from interlink.resilience.events import Listener, Observed, RateLimitRejected

__all__ = ["RateLimiter"]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


class RateLimiter(Observed):
    """A token bucket: ``rate`` tokens per second, holding at most ``burst`` (default
    ``max(1, ceil(rate))``, i.e. about one second's worth).

    ``try_acquire`` never waits or raises; ``acquire``/``aacquire`` wait up to ``timeout``
    seconds (``None``: as long as it takes) and raise ``RateLimited`` otherwise. ``call``,
    ``acall`` and ``@limiter`` take one token with the ``timeout`` given here (default 0: refuse
    rather than wait). Thread- and task-safe; sleeping uses ``sleep``/``asleep``, else the
    clock's own, else ``time.sleep``/``asyncio.sleep``. Listeners get ``RateLimitRejected``
    for every refusal.
    """

    __slots__ = (
        "_asleep",
        "_cap",
        "_clock",
        "_last",
        "_lock",
        "_sleep",
        "_tokens",
        "burst",
        "name",
        "rate",
        "timeout",
    )

    _kind = "rate_limiter"

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        timeout: float | None = 0.0,
        name: str = "rate-limiter",
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        asleep: AsyncSleep | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.rate = positive("rate", rate)
        self.burst = max(1, math.ceil(self.rate)) if burst is None else positive_int("burst", burst)
        self.timeout = None if timeout is None else non_negative("timeout", timeout)
        self.name = name
        self._clock = clock
        self._sleep = sleep_of(clock, sleep)
        self._asleep = async_sleep_of(clock, asleep)
        super().__init__(listeners)
        self._lock = threading.Lock()
        self._cap = float(self.burst)
        self._tokens = self._cap  # may go negative: tokens reserved by waiters
        self._last = clock()

    # -- state -------------------------------------------------------------------------------

    @property
    def available(self) -> float:
        """Tokens in the bucket now; negative while waiters hold reservations."""
        with self._lock:
            return self._refill(self._clock())

    def retry_after(self) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        with self._lock:
            level = self._refill(self._clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def describe(self) -> dict[str, object]:
        """The configuration, for tests and the pipeline's ``describe()``."""
        return described(self._kind, self.name, self, ("rate", "burst", "timeout"))

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, rate={self.rate:g}/s, burst={self.burst})"

    # -- primitives --------------------------------------------------------------------------

    def try_acquire(self, tokens: int = 1) -> bool:
        """Take ``tokens`` if the bucket has them now; never waits, raises or emits."""
        if tokens != 1:
            self._check(tokens)
        lock = self._lock
        lock.acquire()  # explicit acquire/release: half the cost of ``with`` on CPython 3.11
        try:
            level = self._tokens
            now = self._clock()
            elapsed = now - self._last
            if elapsed > 0.0:  # _refill, inlined: this is the hot path
                self._last = now
                level += elapsed * self.rate
                level = level if level < self._cap else self._cap  # min() is a slower call
            if level < tokens:
                self._tokens = level
                return False
            self._tokens = level - tokens
            return True
        finally:
            lock.release()

    def acquire(self, timeout: float | None = 0.0, tokens: int = 1) -> None:
        """Take ``tokens``, sleeping up to ``timeout`` seconds for them (``None``: no limit).

        Raises ``RateLimited`` without waiting when they would come later than that.
        """
        wait = self._take(tokens, timeout)
        if wait:
            self._wait(wait, tokens)

    async def aacquire(self, timeout: float | None = 0.0, tokens: int = 1) -> None:  # noqa: ASYNC109 - caps the wait for a token
        """``acquire`` for tasks: waits without blocking the event loop."""
        wait = self._take(tokens, timeout)
        if wait:
            await self._await(wait, tokens)

    # -- drivers -----------------------------------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Take one token (waiting up to ``timeout``), then run ``fn(*args, **kwargs)``."""
        wait = self._take(1, self.timeout)  # ``acquire``, minus one call layer
        if wait:
            self._wait(wait, 1)
        return fn(*args, **kwargs)

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Take one token (waiting up to ``timeout``), then await ``fn(*args, **kwargs)``."""
        wait = self._take(1, self.timeout)  # no coroutine for ``aacquire`` unless we must wait
        if wait:
            await self._await(wait, 1)
        return await fn(*args, **kwargs)

    def __call__(self, fn: F) -> F:
        """Decorate a def or an async def so that every call takes a token first."""
        return through(fn, self.call, self.acall)

    # -- the bucket --------------------------------------------------------------------------

    def _check(self, tokens: int) -> None:
        positive_int("tokens", tokens)
        if tokens > self.burst:
            raise ValueError(f"'tokens' must be <= burst ({self.burst}): {tokens!r}")

    def _refill(self, now: float) -> float:
        # Caller holds the lock. A clock that steps back adds nothing and keeps _last.
        elapsed = now - self._last
        if elapsed > 0.0:
            self._last = now
            level = self._tokens + elapsed * self.rate
            self._tokens = level if level < self._cap else self._cap
        return self._tokens

    def _take(self, tokens: int, timeout: float | None) -> float:
        """Take or reserve ``tokens``; the seconds to sleep before using them."""
        if tokens != 1:
            self._check(tokens)
        lock = self._lock
        lock.acquire()
        try:
            level = self._tokens
            now = self._clock()
            elapsed = now - self._last
            if elapsed > 0.0:
                self._last = now
                level += elapsed * self.rate
                level = level if level < self._cap else self._cap  # min() is a slower call
            if level >= tokens:
                self._tokens = level - tokens
                return 0.0
            wait = (tokens - level) / self.rate
            left = remaining()
            if (timeout is None or wait <= timeout) and (left is None or wait <= left):
                self._tokens = level - tokens  # reserve: later callers queue behind us
                return wait
            self._tokens = level
        finally:
            lock.release()
        if self._events:
            self._emit(RateLimitRejected, self.name, now, retry_after=wait)
        raise RateLimited(self.name, self.rate, self.burst, wait)

    def _wait(self, wait: float, tokens: int) -> None:
        """Sleep until the reserved ``tokens`` are due; give them back if interrupted."""
        try:
            self._sleep(wait)
        except BaseException:
            self._refund(tokens)
            raise

    async def _await(self, wait: float, tokens: int) -> None:
        try:
            await self._asleep(wait)
        except BaseException:
            self._refund(tokens)
            raise

    def _refund(self, tokens: int) -> None:
        with self._lock:
            level = self._refill(self._clock()) + tokens
            self._tokens = level if level < self._cap else self._cap
