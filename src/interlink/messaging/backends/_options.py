"""URL query options and reconnect pacing shared by the server backends (NATS, RabbitMQ, Redis).

Options ride in the URL (``redis://host/0?visibility_timeout=30``), so one string configures a
broker from the command line, the environment or a config file alike. Unknown or malformed
options fail at construction, naming the option and the value, like every other interlink
setting.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from interlink.resilience.retry import Retry

__all__ = [
    "DLQ_MAX_AGE",
    "DLQ_MAX_COUNT",
    "UrlOptions",
    "close_at_loop_end",
    "connect_failure",
    "reconnect_delay",
    "stop_keeper",
]

#: Every backend's default DLQ retention: seconds a dead letter is kept (14 days), and the most
#: kept per topic (the oldest go first). URL options ``dlq_max_age`` and ``dlq_max_count``.
DLQ_MAX_AGE = 14 * 24 * 3600.0
DLQ_MAX_COUNT = 100_000

_RECONNECT_MAX = 2.0

N = TypeVar("N", int, float)

# One schedule for every backend's "the server went away" loop: 50 ms doubling to 2 s, with
# equal jitter so a crowd of consumers does not reconnect in lockstep (nor spin at 0 s).
_RECONNECT = Retry(
    retries=1_000,
    backoff=0.05,
    multiplier=2.0,
    max_backoff=_RECONNECT_MAX,
    jitter="equal",
    name="reconnect",
)


def reconnect_delay(failures: int, exc: BaseException) -> float:
    """Seconds to wait after ``failures`` consecutive connection failures (1 for the first)."""
    # The exponent is capped: past 2 s the schedule is flat anyway.
    try:
        return _RECONNECT.next_delay(min(max(failures - 1, 0), 16), _as_exception(exc))
    except Exception:  # a deadline in the caller's context: pace anyway, never spin
        return _RECONNECT_MAX


def close_at_loop_end(close: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """A task that waits forever and awaits ``close()`` when it is cancelled.

    ``asyncio.run`` cancels the tasks still pending when its main coroutine returns, so a
    connection nobody closed (a script that forgot ``aclose``) is closed cleanly there instead
    of being torn down by the garbage collector after the loop is gone (a ResourceWarning and,
    for a broker, acks never sent). ``aclose`` cancels the task; ``close`` must then be a no-op.
    """

    async def wait_then_close() -> None:
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            await close()
            raise

    return asyncio.create_task(wait_then_close(), name="interlink: close at loop end")


def stop_keeper(keeper: asyncio.Task[None] | None) -> None:
    """Cancel a ``close_at_loop_end`` task, unless it is the one running (it is closing)."""
    if keeper is not None and keeper is not asyncio.current_task():
        keeper.cancel()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for error in list(seen):  # some clients keep the cause among their arguments
        seen.extend(arg for arg in error.args if isinstance(arg, BaseException))
    return seen


def connect_failure(exc: BaseException, *, tried: str, within: float) -> str:
    """What went wrong connecting to ``tried`` (URLs, passwords masked), in words: refused,
    timed out, authentication failed, host not found, or the error itself."""
    errors = _chain(exc)
    texts = " ".join(f"{type(e).__name__} {e}" for e in errors).lower()
    if any(isinstance(e, ConnectionRefusedError) for e in errors) or "refused" in texts:
        if "access_refused" in texts or "access refused" in texts:
            what = "authentication failed (access refused)"
        else:
            what = "connection refused (nothing listens there)"
    elif "auth" in texts or "password" in texts or "credentials" in texts:
        what = "authentication failed"
    elif any(isinstance(e, socket.gaierror) for e in errors) or "name or service" in texts:
        what = "host not found"
    elif any(isinstance(e, TimeoutError) for e in errors) or "timeout" in texts:
        what = f"timed out after {within:g} s"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return f"cannot connect to {tried}: {what}"


def _as_exception(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else ConnectionError(str(exc))


class UrlOptions:
    """The query of a backend URL, read once: each getter validates and removes its option,
    ``done()`` rejects any option no getter asked for (a typo must not pass silently)."""

    def __init__(self, url: str, backend: str) -> None:
        parts = urlsplit(url)
        self.backend = backend
        self.base = urlunsplit(parts._replace(query="", fragment=""))
        self._query: dict[str, str] = dict(parse_qsl(parts.query, keep_blank_values=True))

    def _take(self, name: str) -> str | None:
        return self._query.pop(name, None)

    def _at_least(self, name: str, parse: Callable[[str], N], minimum: N, what: str) -> N | None:
        """The option parsed, finite and >= ``minimum``; None when absent."""
        raw = self._take(name)
        if raw is None:
            return None
        try:
            value: N | None = parse(raw)
        except ValueError:
            value = None
        if value is None or not (math.isfinite(value) and value >= minimum):
            raise ValueError(f"'{name}' must be {what} >= {minimum:g}: {raw!r}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        """A finite number >= ``minimum``."""
        value = self._at_least(name, float, minimum, "a number")
        return default if value is None else value

    def integer(self, name: str, default: int | None, *, minimum: int = 0) -> int | None:
        """An integer >= ``minimum`` (or the default, which may be None)."""
        value = self._at_least(name, int, minimum, "an integer")
        return default if value is None else value

    def choice(self, name: str, default: str, allowed: Iterable[str]) -> str:
        """One of ``allowed``."""
        raw = self._take(name)
        if raw is None:
            return default
        options = tuple(allowed)
        if raw not in options:
            names = ", ".join(repr(o) for o in options)
            raise ValueError(f"'{name}' must be one of {names}: {raw!r}")
        return raw

    def text(self, name: str, default: str) -> str:
        """Any string."""
        raw = self._take(name)
        return default if raw is None else raw

    def dlq_retention(self) -> tuple[float, int]:
        """``dlq_max_age`` (s, > 0) and ``dlq_max_count`` (>= 1): how long and how many dead
        letters a topic keeps, the same two options on every backend."""
        age = self.number("dlq_max_age", DLQ_MAX_AGE, minimum=0.001)
        return age, self.integer("dlq_max_count", DLQ_MAX_COUNT, minimum=1) or DLQ_MAX_COUNT

    def done(self) -> None:
        """Fail on options nobody read."""
        if self._query:
            unknown = ", ".join(sorted(self._query))
            raise ValueError(
                f"'url' has options the {self.backend} backend does not know: {unknown}"
            )
