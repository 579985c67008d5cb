"""The upstream side: HTTP/1.1 connections to upstream servers, pooled per address.

``UpstreamPool.acquire(host, port)`` hands out an idle kept-alive connection or opens a new one,
at most ``max_connections`` per address (a caller past that waits up to ``pool_timeout``, then
gets ``upstream_pool_full``). A connection idle longer than ``idle_timeout`` is closed rather
than reused: servers close idle connections on their own schedule, and reusing one they just
closed is the classic source of spurious 502s.

A pooled connection that the upstream closed anyway is detected: when the request was written
to a *reused* connection and the connection ended before a single response byte came back, the
failure is marked ``stale`` and the engine sends the request again on a fresh connection — when
nothing of it was sent yet, or the method is idempotent and the body can be replayed.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httptools

from interlink.proxy.errors import ProxyError
from interlink.resilience._validate import positive_fields

__all__ = [
    "Listener",
    "PoolLimits",
    "ResponseHead",
    "UpstreamConnection",
    "UpstreamFailure",
    "UpstreamPool",
    "header_pairs",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolLimits:
    """Per-address limits of the upstream pool (times in seconds)."""

    max_connections: int = 256
    max_idle: int = 64
    idle_timeout: float = 15.0
    connect_timeout: float = 2.0
    pool_timeout: float = 1.0

    def __post_init__(self) -> None:
        positive_fields(self)


class UpstreamFailure(Exception):
    """An attempt that reached no usable answer: ``reason`` is a proxy error reason.

    ``stale``: a reused connection ended before any response byte (safe to resend under the
    rules in the module docstring); ``retriable``: the engine may try again elsewhere.
    """

    def __init__(self, reason: str, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.stale = stale
        self.retriable = True

    def to_error(self) -> ProxyError:
        """The ``ProxyError`` the client gets for this failure."""
        return ProxyError(self.reason, self.message)


#: one header line of a head that llhttp accepted (no folding, no bare LF, no space before
#: the colon): the name, and the value without the whitespace around it
HEADER_LINE = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*?)[ \t]*\r\n")


def header_pairs(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) pairs of a head's header lines, in the order received."""
    return [(name.lower(), value) for name, value in HEADER_LINE.findall(block)]


@dataclass(slots=True)
class ResponseHead:
    """Status and headers of an upstream response; the body follows through the sink."""

    status: int
    #: the header lines as received (``Name: value\r\n`` each): kept whole, not split into a
    #: pair per header, since most answers are relayed with a few lines left out
    block: bytes
    keep_alive: bool
    upgrade: bool

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(lower-case name, value) pairs, in the order received."""
        return header_pairs(self.block)


class Listener(Protocol):
    """Told an exchange's outcome from the connection's own callbacks (no task waits):
    ``head`` once the response head is parsed, ``failed`` when the exchange ends without
    its whole answer (before the head or mid-body)."""

    def head(self, head: ResponseHead) -> None:
        """The response head arrived (call ``stream_to`` for the body)."""

    def waiting(self) -> None:
        """What arrived so far is delivered; the rest of the body comes later."""

    def failed(self, failure: UpstreamFailure) -> None:
        """The exchange failed; the connection is no longer usable."""

    def whole(self, head: ResponseHead, body: list[bytes]) -> None:
        """The whole answer arrived in one read: its head and its body's chunks, told at once
        instead of ``head``, the body chunk by chunk, and its end (the usual small answer)."""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream: write a request, read the response head, stream the
    body to a ``sink`` (``sink(data)``; ``sink(b"")`` once at the end)."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        #: what arrived since the request was sent, until the response head is whole (the
        #: head is cut from it, see ``on_headers_complete``); None once the head is parsed
        self._head_data: bytes | None = None
        #: where the head being parsed starts in ``_head_data`` (after interim responses)
        self._head_start = 0
        self._received_any = False
        self._complete = False
        self._sink: Callable[[bytes], None] | None = None
        self._pending: list[bytes] = []
        self._raw: Callable[[bytes], None] | None = None
        self._head_only = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._upgrade_rest = b""
        self._forgotten = False
        self._keep_alive = False
        self._interim = False
        # The response-head timeout: one lazy loop timer per connection. An exchange only
        # records when its head is due; the timer is re-scheduled only when it would fire too
        # late, and when it fires early it re-schedules itself (no timer per request).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._due: float | None = None
        self._listener: Listener | None = None
        #: a listener's response head, held until the read that brought it is parsed: when
        #: the whole answer came with it, the listener hears of it once (``Listener.whole``)
        self._held_head: ResponseHead | None = None

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        """Wait while the upstream reads the request body slower than it is written."""
        if self._write_paused and not self.closed:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._pool._forget(self)
        if self._raw is not None:
            self._raw(b"")
            return
        if self._listener is not None:
            if self._sink is None:
                self._notify(
                    UpstreamFailure(
                        "upstream_reset",
                        "the upstream closed the connection before answering",
                        stale=self.reused and not self._received_any,
                    )
                )
            else:
                self._notify(UpstreamFailure("upstream_reset", "the upstream closed mid-response"))
            return
        head = self._head
        if head is not None and not head.done():
            stale = self.reused and not self._received_any
            reason = "upstream_reset"
            head.set_exception(
                UpstreamFailure(
                    reason, "the upstream closed the connection before answering", stale=stale
                )
            )
        self._end_body(UpstreamFailure("upstream_reset", "the upstream closed mid-response"))

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self._raw(data)
            return
        self._received_any = True
        if self._head_data is not None:
            self._head_data += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_rest = data[offset:]
        except httptools.HttpParserError:
            self._fail(
                UpstreamFailure("upstream_bad_response", "the upstream's answer is not HTTP")
            )
            return
        listener = self._listener
        if listener is None:
            return
        head = self._held_head
        if head is not None:
            self._held_head = None
            if self._complete:  # the whole answer in one read: one call tells all of it
                self._listener = None
                pending, self._pending = self._pending, []
                listener.whole(head, pending)
                return
            listener.head(head)
        if self._sink is not None:
            listener.waiting()  # a head (and maybe some body) arrived, the rest will follow

    # ---------------------------------------------------------------- parser callbacks

    def _schedule(self, due: float) -> None:
        """Make the loop's timer fire at ``due`` (it would fire too late, or there is none)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(due, self._on_timer)
        self._timer_at = due

    def _on_timer(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return
        if self._loop.time() < due:  # fired for an earlier exchange: wait for this one's
            self._schedule(due)
            return
        self._due = None
        self._fail(UpstreamFailure("upstream_timeout", "the upstream did not answer in time"))

    # No ``on_header``: one Python call per header is the dearest part of parsing a head. The
    # parser validates the head; its lines are then cut whole from the bytes received, where
    # llhttp (strict: CRLF line ends only) has just found its end.

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        data = self._head_data or b""
        start = self._head_start
        end = data.find(b"\r\n\r\n", start) + 2  # after the last header line
        if 100 <= status < 200 and status != 101:
            self._head_start = end + 2  # an interim response (100 Continue): wait for the real one
            self._interim = True
            return
        block = data[data.find(b"\r\n", start) + 2 : end]
        self._head_data = None
        self._keep_alive = parser.should_keep_alive()
        self._due = None  # the head is here: no timeout any more
        head = ResponseHead(status, block, self._keep_alive, status == 101)
        if self._listener is not None:
            self._held_head = head  # told when the read is parsed (see data_received)
        elif self._head is not None and not self._head.done():
            self._head.set_result(head)
        if self._head_only:
            self._complete = True
            if self._held_head is None:
                self._finish()

    def on_body(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self._pending.append(data)
        else:
            sink(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._head_only:
            return
        self._complete = True
        if self._held_head is None:  # (else the listener hears of it once, with the head)
            self._finish()

    def _finish(self) -> None:
        self._listener = None  # the exchange is complete: nothing more to tell
        if self._sink is not None:
            self._sink(b"")
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def _notify(self, failure: UpstreamFailure) -> None:
        listener = self._listener
        if listener is not None:
            self._listener = None
            head = self._held_head
            if head is not None:  # the head came before the failure: it is told first
                self._held_head = None
                if self._complete:  # and the whole answer: the failure is the next one's
                    pending, self._pending = self._pending, []
                    listener.whole(head, pending)
                    return
                listener.head(head)
            listener.failed(failure)

    def _fail(self, failure: UpstreamFailure) -> None:
        if self._listener is not None:
            self._notify(failure)
            self.abort()
            return
        head = self._head
        if head is not None and not head.done():
            head.set_exception(failure)
        self._end_body(failure)
        self.abort()

    def _end_body(self, failure: UpstreamFailure) -> None:
        """End the body's future: done when complete, failed when a sink awaits the rest,
        silently cancelled when nobody ever asked for the body (no unretrieved error)."""
        done = self._done
        if done is None or done.done():
            return
        if self._complete:
            done.set_result(None)
        elif self._sink is not None:
            done.set_exception(failure)
        else:
            done.cancel()

    # ---------------------------------------------------------------- the exchange

    def send(
        self,
        data: bytes,
        *,
        head_only: bool = False,
        timeout: float | None = None,
        listener: Listener | None = None,
    ) -> None:
        """Start an exchange: write the request head (and body, if given whole); without a
        response head within ``timeout`` seconds the exchange fails with ``upstream_timeout``
        and the connection is dropped.

        With a ``listener`` the outcome is told to it from the connection's callbacks instead
        of through ``response()`` and the future of ``stream_to`` (no task needs to wait)."""
        if timeout is not None:  # the timer re-scheduled only when it would fire too late
            due = self._due = self._loop.time() + timeout
            if self._timer is None or self._timer_at > due:
                self._schedule(due)
        self._listener = listener
        if listener is None:
            self._head = self._loop.create_future()
            self._done = self._loop.create_future()
        else:
            self._head = self._done = None
        self._received_any = False
        self._head_data = b""
        self._head_start = 0
        self._complete = False
        self._sink = None
        if self._pending:
            self._pending = []
        self._held_head = None
        self._head_only = head_only
        assert self.transport is not None
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        """Write more of the request body."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def response(self) -> ResponseHead:
        """Wait for the response head (status and headers)."""
        assert self._head is not None
        return await self._head

    def stream_to(self, sink: Callable[[bytes], None]) -> asyncio.Future[None] | None:
        """Deliver the body to ``sink`` from now on; the future ends with the body (None for
        an exchange with a listener, which hears of a failure instead)."""
        if self._done is not None and self._done.cancelled():
            # the connection failed between the head and this call
            raise UpstreamFailure("upstream_reset", "the upstream closed mid-response")
        self._sink = sink
        pending, self._pending = self._pending, []
        for chunk in pending:
            sink(chunk)
        if self._complete:
            sink(b"")
        return self._done

    def tunnel(self, on_data: Callable[[bytes], None]) -> bytes:
        """Switch to raw bytes after a ``101``; returns bytes that came after the head."""
        self._raw = on_data
        rest, self._upgrade_rest = self._upgrade_rest, b""
        return rest

    def pause_reading(self) -> None:
        """Stop reading (the client is slower than the upstream)."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    @property
    def reusable(self) -> bool:
        """Whether the exchange ended cleanly and the upstream keeps the connection open."""
        # after a HEAD the parser cannot know the answer had no body: never reuse that one
        return self._complete and not self.closed and self._keep_alive and not self._head_only

    def abort(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Slot:
    __slots__ = ("count", "idle", "waiters")

    def __init__(self) -> None:
        self.idle: deque[UpstreamConnection] = deque()
        self.count = 0
        self.waiters: deque[asyncio.Future[None]] = deque()


class UpstreamPool:
    """Kept-alive connections to upstream addresses (see the module docstring)."""

    def __init__(
        self, limits: PoolLimits | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or PoolLimits()
        self._clock = clock
        self._slots: dict[tuple[str, int], _Slot] = {}
        self.opened = 0

    async def acquire(self, host: str, port: int) -> UpstreamConnection:
        """A connection to ``host:port``: an idle one when there is one, else a new one.

        Raises ``UpstreamFailure`` (``upstream_connect_refused``, ``upstream_timeout``) or
        ``ProxyError('upstream_pool_full')``.
        """
        conn = self.take_idle(host, port)
        if conn is not None:
            return conn
        key = (host, port)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
        if slot.count >= self.limits.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            slot.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.limits.pool_timeout)
            except TimeoutError:
                raise ProxyError(
                    "upstream_pool_full", "every connection to the upstream is busy"
                ) from None
            finally:
                if waiter in slot.waiters:
                    slot.waiters.remove(waiter)
            return await self.acquire(host, port)
        slot.count += 1
        try:
            return await self._open(key)
        except BaseException:
            slot.count -= 1
            self._wake(slot)
            raise

    def take_idle(self, host: str, port: int) -> UpstreamConnection | None:
        """An idle kept-alive connection to ``host:port`` at once, or None (then ``acquire``)."""
        slot = self._slots.get((host, port))
        if slot is None or not slot.idle:
            return None
        idle = slot.idle
        now = self._clock()
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if now - conn.idle_since > self.limits.idle_timeout:
                conn.abort()
                continue
            conn.reused = True
            return conn
        return None

    async def _open(self, key: tuple[str, int]) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, key), key[0], key[1]
                )
        except TimeoutError:
            raise UpstreamFailure(
                "upstream_timeout", "connecting to the upstream timed out"
            ) from None
        except OSError:
            raise UpstreamFailure(
                "upstream_connect_refused", "the upstream refused the connection"
            ) from None
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Give ``conn`` back: kept when reusable and the pool has room, closed otherwise."""
        slot = self._slots.get(conn.key)
        if slot is None:
            conn.abort()
            return
        if conn.reusable and len(slot.idle) < self.limits.max_idle:
            conn.idle_since = self._clock()
            conn._sink = None
            slot.idle.append(conn)
            if slot.waiters:
                self._wake(slot)
        else:
            conn.abort()

    def _forget(self, conn: UpstreamConnection) -> None:
        slot = self._slots.get(conn.key)
        if slot is None or conn._forgotten:
            return
        conn._forgotten = True
        slot.count -= 1
        if conn in slot.idle:
            slot.idle.remove(conn)
        self._wake(slot)

    def _wake(self, slot: _Slot) -> None:
        while slot.waiters:
            waiter = slot.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection (in-flight ones close when their exchange ends)."""
        for slot in self._slots.values():
            while slot.idle:
                slot.idle.pop().abort()
