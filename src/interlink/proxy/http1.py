"""The client side of the proxy: HTTP/1.1 parsed by llhttp (``httptools``), on an asyncio
``Protocol`` — no framework in between.

One ``ServerConnection`` per accepted socket. It enforces the limits that protect the proxy
before any routing happens:

- the request head (line + headers) must arrive within ``head_timeout`` seconds and hold at most
  ``max_header_bytes`` (else 408 / 431): a slow-loris client cannot hold a connection open by
  trickling bytes;
- a body may not exceed ``max_body_bytes`` (413, as soon as a ``Content-Length`` announces it or
  the streamed bytes pass it), and must keep arriving (``body_timeout`` between chunks);
- a request whose length is ambiguous (two ``Content-Length`` headers, ``Content-Length`` with
  ``Transfer-Encoding``, a ``Transfer-Encoding`` other than ``chunked``) is refused with 400
  ``ambiguous_length`` and the connection closed: that ambiguity is how requests are smuggled
  past a proxy.

Requests are handed to ``handler(request, connection)`` one at a time per connection (pipelined
requests wait their turn, so responses leave in order). An ``answer_now(request, connection)``
hook may take a request first: when it returns True it answers from callbacks (no task per
request) or hands a coroutine to ``continue_with``, and calls ``finish()`` when the response is
complete. Bodies stream both ways: the handler
reads ``request.body`` chunk by chunk while the client sends it, and writes the response with
``start``/``write``/``end``, with back-pressure in both directions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools

from interlink.context import new_correlation_id
from interlink.proxy.errors import ProxyError, error_body, status_text
from interlink.resilience._validate import positive_fields

__all__ = ["Body", "ClientGone", "Limits", "Request", "ServerConnection"]

_HIGH_WATER = 256 * 1024
_NEVER = float("inf")
log = logging.getLogger("interlink.proxy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one client connection may cost the proxy (sizes in bytes, times in seconds)."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 10 * 1024 * 1024
    head_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0

    def __post_init__(self) -> None:
        positive_fields(self)


class ClientGone(Exception):
    """The client closed its connection (or broke the protocol) while its body was read."""


class Body:
    """A request body as it arrives: ``async for chunk in body``.

    Chunks up to ``replay_limit`` bytes in total are also kept, so a body that arrived whole
    and small can be sent again on a retry (``replayable``).
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_error",
        "_kept",
        "_kept_size",
        "_queued",
        "_waiter",
        "complete",
        "consumed",
        "received",
        "replay_limit",
    )

    def __init__(self, conn: ServerConnection, replay_limit: int = 64 * 1024) -> None:
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._kept: list[bytes] | None = []
        self._kept_size = 0
        self.complete = False
        self.consumed = False
        self.received = 0
        self.replay_limit = replay_limit

    @property
    def replayable(self) -> bool:
        """Whether the whole body arrived and was kept: it can be sent more than once."""
        return self.complete and self._kept is not None

    def kept(self) -> bytes:
        """The whole body, when ``replayable``."""
        if self._kept is None or not self.complete:
            raise RuntimeError("the body is not replayable")
        return b"".join(self._kept)

    def _feed(self, data: bytes) -> None:
        self.received += len(data)
        self._chunks.append(data)
        self._queued += len(data)
        kept = self._kept
        if kept is not None:
            self._kept_size += len(data)
            if self._kept_size > self.replay_limit:
                self._kept = None
            else:
                kept.append(data)
        if self._queued > _HIGH_WATER:
            self._conn._pause_reading()
        self._wake()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk, or ``b""`` at the end. Raises ``ClientGone`` or the ``ProxyError``
        that ended the body (too large, too slow)."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                if self._queued <= _HIGH_WATER // 2:
                    self._conn._resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self.complete:
                self.consumed = True
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk


class Request:
    """One parsed request head, and its body as it streams in.

    ``request.header(name)``: the first value of header ``name`` (lower case), or None.
    """

    __slots__ = (
        "body",
        "client",
        "has_body",
        "header",
        "headers",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body,
        *,
        version: str = "1.1",
        client: str = "",
        keep_alive: bool = True,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        #: (lower-case name, value) in arrival order, repeats kept
        self.headers = headers
        self.body = body
        self.client = client
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        first = dict(reversed(headers))  # the first value of a repeated header wins
        #: the first value of a header (lower-case name), or None: the dictionary's own ``get``,
        #: looked up about ten times per request without a Python call each
        self.header: Callable[[str], str | None] = first.get
        #: whether the request announced a body (a length or chunked encoding)
        self.has_body = "transfer-encoding" in first or first.get("content-length", "0") != "0"

    def again(
        self, method: str, target: str, body: Body, *, version: str, keep_alive: bool, upgrade: bool
    ) -> Request:
        """The next request on the connection, with the same headers as this one (clients
        repeat theirs): it shares this one's headers and their look-up instead of building
        them again; the same strings also keep their hashes for the look-ups that follow."""
        request = Request.__new__(Request)
        request.method = method
        request.target = target
        request.version = version
        request.headers = self.headers
        request.body = body
        request.client = self.client
        request.keep_alive = keep_alive
        request.upgrade = upgrade
        request.header = self.header
        request.has_body = self.has_body
        return request


Handler = Callable[[Request, "ServerConnection"], Coroutine[Any, Any, None]]
#: takes a request without a task, or returns False for ``Handler`` to answer it
AnswerNow = Callable[[Request, "ServerConnection"], bool]


_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _decoded(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """(lower-case name, value) pairs of the parser's (name, value) bytes."""
    return [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]


def _framing_error(headers: list[tuple[str, str]]) -> ProxyError | None:
    lengths = [v for k, v in headers if k == "content-length"]
    encodings = [v for k, v in headers if k == "transfer-encoding"]
    if len(lengths) > 1 or (lengths and encodings):
        return ProxyError("ambiguous_length", "the request's length is ambiguous")
    if encodings and (len(encodings) > 1 or encodings[0].strip().lower() != "chunked"):
        return ProxyError("ambiguous_length", "only 'Transfer-Encoding: chunked' is accepted")
    if lengths and not lengths[0].strip().isdigit():
        return ProxyError("ambiguous_length", "'Content-Length' is not a number")
    return None


class ServerConnection(asyncio.Protocol):
    """One client connection: parse, enforce limits, hand requests to ``handler`` in order,
    and write the responses (see the module docstring)."""

    def __init__(
        self, handler: Handler, limits: Limits, *, answer_now: AnswerNow | None = None
    ) -> None:
        self._handler = handler
        self._answer_now = answer_now
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        #: the target as it arrives: bytes, since almost always one piece (``b"" + piece`` is the
        #: piece itself, no copy); a trickled one is bounded by ``max_header_bytes``
        self._url = b""
        #: the head's headers as the parser gives them (decoded once the head is whole, and
        #: not at all when they repeat the last request's, ``_last_raw``)
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._last_raw: list[tuple[bytes, bytes]] = []
        self._header_name = b""
        self._head_bytes = 0
        self._in_head = False
        self._current: Request | None = None
        #: the last request without a body or an upgrade (its headers may come again)
        self._last: Request | None = None
        #: whatever the handler keeps per connection (the engine: the upstream head it built
        #: last, for a request like the last one)
        self.memo: Any = None
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: when the loop's timer fires (``_NEVER`` without one)
        self._timer_at = _NEVER
        self._due = 0.0
        self._on_due: Callable[[], None] | None = None
        self._read_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._closed = False
        self._tunnel: Callable[[bytes], None] | None = None
        self._producer: asyncio.BaseTransport | None = None
        self._receiving: Request | None = None
        self._upgrade_rest = b""
        self._held: bytes | None = None
        #: the body of every request without a length or an encoding: it has none, it is
        #: complete from the start, and one per connection spares a ``Body`` per request
        self._no_body = Body(self)
        self._no_body.complete = True
        #: response state
        self._chunked = False
        self._started = False
        self._close_after = False
        self.status = 0

    # -------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self._arm(self._limits.keepalive_timeout, self._on_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cancel_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = _NEVER
        if self._current is not None:
            self._current.body._fail(ClientGone("the client closed the connection"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ClientGone("the client closed the connection"))
        if self._tunnel is not None:
            self._tunnel(b"")
        producer = self._producer
        if producer is not None:  # the client left mid-response: stop the upstream too
            producer.close()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel(data)
            return
        if not self._in_head and self._current is None and not self._queue:
            due = self._loop.time() + self._limits.head_timeout  # ``_arm``, inline
            self._due = due
            self._on_due = self._on_slow_head
            if self._timer_at > due:
                self._schedule(due)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_rest = data[offset:]
            self._pause_reading()
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, ProxyError):
                self._refuse(cause)
            else:
                self._refuse(ProxyError("bad_request", "the request is not valid HTTP/1.1"))
        except httptools.HttpParserError as error:
            text = str(error).lower()
            if "content-length" in text or "transfer-encoding" in text:
                self._refuse(ProxyError("ambiguous_length", "the request's length is ambiguous"))
            else:
                self._refuse(ProxyError("bad_request", "the request is not valid HTTP/1.1"))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._producer is not None:
            self._producer.pause_reading()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._producer is not None:
            self._producer.resume_reading()  # type: ignore[attr-defined]
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -------------------------------------------------------------- parser callbacks

    # No ``on_message_begin``: httptools calls only the callbacks a protocol has, and one call
    # less per request is measurable. The URL is the first part of every head, so ``on_url``
    # marks the head as begun; ``on_headers_complete`` resets the state for the next one.

    def on_url(self, url: bytes) -> None:
        self._in_head = True
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            self._count(0)  # raises

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_header_bytes:
            self._count(0)  # raises
        self._raw_headers.append((name, value))

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self._limits.max_header_bytes:
            raise ProxyError(
                "headers_too_large",
                f"the request head exceeds {self._limits.max_header_bytes} bytes",
            )

    def on_headers_complete(self) -> None:
        self._in_head = False
        raw = self._raw_headers
        parser = self._parser
        last = self._last
        if last is not None and raw == self._last_raw:  # (no body nor upgrade: see below)
            request = last.again(
                parser.get_method().decode("ascii", "replace"),
                self._url.decode("latin-1"),
                self._no_body,
                version=parser.get_http_version(),
                keep_alive=parser.should_keep_alive(),
                upgrade=parser.should_upgrade(),  # (CONNECT is one, whatever the headers)
            )
        else:
            headers = _decoded(raw)
            framed = False
            for key, _ in headers:
                if key in _FRAMING:
                    framed = True
            if framed:  # a length or an encoding: checked for ambiguity and size
                error = _framing_error(headers)
                if error is not None:
                    raise error
                for key, value in headers:
                    if key == "content-length" and int(value) > self._limits.max_body_bytes:
                        raise ProxyError(
                            "body_too_large",
                            f"the body exceeds {self._limits.max_body_bytes} bytes",
                        )
            request = Request(
                parser.get_method().decode("ascii", "replace"),
                self._url.decode("latin-1"),
                headers,
                Body(self) if framed else self._no_body,
                version=parser.get_http_version(),
                client=self.client,
                keep_alive=parser.should_keep_alive(),
                upgrade=parser.should_upgrade(),
            )
            if framed or request.upgrade:
                self._last = None
            else:
                self._last, self._last_raw = request, raw
        self._url = b""
        self._raw_headers = []
        self._head_bytes = 0
        if self._current is None:
            self._on_due = None  # the head is whole: its timer is off
            self._start(request)
        else:
            self._queue.append(request)
            if len(self._queue) > 8:
                self._pause_reading()
        self._receiving = request

    def on_body(self, data: bytes) -> None:
        receiving = self._receiving
        assert receiving is not None
        body = receiving.body
        if body.received + len(data) > self._limits.max_body_bytes:
            raise ProxyError(
                "body_too_large", f"the body exceeds {self._limits.max_body_bytes} bytes"
            )
        body._feed(data)
        if receiving is self._current:
            self._arm(self._limits.body_timeout, self._on_slow_body)

    def on_message_complete(self) -> None:
        receiving = self._receiving
        assert receiving is not None
        body = receiving.body
        if not body.complete:  # (a request without a body has one complete from the start)
            body._finish()
        if receiving is self._current:
            self._on_due = None  # the body is whole: its timer is off

    # -------------------------------------------------------------- request lifecycle

    def _start(self, request: Request) -> None:
        self._current = request
        self._started = False
        self._chunked = False
        self._close_after = not request.keep_alive
        self.status = 0
        answer_now = self._answer_now
        if answer_now is not None:
            try:
                if answer_now(request, self):
                    return
            except Exception:
                self._defect(request)
                self.finish()
                return
        self._task = self._loop.create_task(self._run(self._handler(request, self)))

    def continue_with(self, work: Coroutine[Any, Any, None]) -> None:
        """Answer the current request (taken by ``answer_now``) by running ``work`` as a task;
        the connection finishes the request when it ends."""
        self._task = self._loop.create_task(self._run(work))

    async def _run(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except ClientGone:
            self.abort()
            return
        except Exception:
            if self._defect(self._current):
                return
        self.finish()

    def _defect(self, request: Request | None) -> bool:
        """A defect in a handler: answered, logged, never a stack trace out; True when the
        connection had to be dropped instead."""
        log.exception("the request handler failed")
        if self._started or request is None:
            self.abort()
            return True
        self.respond_error(
            ProxyError("internal_error", "the gateway failed to handle the request"),
            _request_id(request.headers),
        )
        return False

    def finish(self) -> None:
        """The current request's response is complete: go on with the next request."""
        request = self._current
        if self._held is not None:
            self.flush()
        if self._closed or request is None:
            return
        if not request.body.complete:
            # the handler did not read the whole body: the next request cannot be found in
            # the stream without reading it, so the connection ends here
            self._close_after = True
        self._current = None
        self._producer = None  # the response is whole: nothing left to hold back
        if self._close_after or request.upgrade:
            if self._tunnel is None and self.transport is not None:
                self.transport.close()
            return
        if self._read_paused:
            self._resume_reading()
        if self._queue:
            self._start(self._queue.popleft())
        else:
            due = self._loop.time() + self._limits.keepalive_timeout  # ``_arm``, inline
            self._due = due
            self._on_due = self._on_idle
            if self._timer_at > due:
                self._schedule(due)

    # -------------------------------------------------------------- response writing

    def start(self, status: int, headers: list[tuple[str, str]], *, close: bool = False) -> None:
        """Send the response head. Without ``content-length`` in ``headers`` the body is sent
        chunked (or delimited by closing, to an HTTP/1.0 client)."""
        block = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
        sized = any(name == "content-length" for name, _ in headers)
        self.start_encoded(status, block, sized=sized, close=close)

    def start_encoded(self, status: int, block: bytes, *, sized: bool, close: bool = False) -> None:
        """``start`` with the header lines already encoded (``name: value\\r\\n`` each);
        ``sized``: whether they hold a ``content-length``."""
        request = self._current
        assert request is not None
        self._started = True
        self.status = status
        if close:
            self._close_after = True
        framed = sized or status < 200 or status in (204, 304) or request.method == "HEAD"
        tail = b"\r\n"
        if not framed:
            if request.version == "1.1":
                self._chunked = True
                tail = b"transfer-encoding: chunked\r\n\r\n"
            else:
                self._close_after = True
        if self._close_after and status != 101:
            tail = tail[:-2] + b"connection: close\r\n\r\n"
        # held back until the first body bytes (or ``flush``): one write, one syscall
        line = _STATUS_LINES.get(status) or _status_line(status)
        self._held = line + block + tail

    def send_whole(self, status: int, block: bytes, sized: bool, body: list[bytes]) -> None:
        """``start_encoded``, ``write`` of each of ``body``'s chunks and ``end`` in one call and
        one write (a whole small answer)."""
        self.start_encoded(status, block, sized=sized)
        out = self._held
        assert out is not None
        self._held = None
        data = body[0] if len(body) == 1 else b"".join(body)
        if self._chunked:
            self._chunked = False
            out += b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        else:
            out += data
        if not self._closed and self.transport is not None:
            self.transport.write(out)

    def flush(self) -> None:
        """Send a response head that ``start`` is still holding back."""
        held = self._held
        if held is not None:
            self._held = None
            if not self._closed and self.transport is not None:
                self.transport.write(held)

    def write(self, data: bytes) -> None:
        """Send part of the response body."""
        if not data:
            return
        if self._chunked:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(data)

    def end(self) -> None:
        """End the response body."""
        if self._chunked:
            self._chunked = False
            self._write(b"0\r\n\r\n")
        elif self._held is not None:  # no body at all: the head goes alone
            self.flush()

    async def drain(self) -> None:
        """Wait while the client reads slower than the response is written."""
        self.flush()
        if self._closed:
            raise ClientGone("the client closed the connection")
        if self._write_paused:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def respond_error(
        self,
        error: ProxyError,
        request_id: str,
        headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    ) -> None:
        """Answer the current request with ``error`` as JSON."""
        body = error_body(error, request_id)
        all_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", request_id),
            *error.headers,
            *headers,
        ]
        self.start(error.status, all_headers, close=error.status in (400, 408, 413, 431))
        self._write(body)

    @property
    def started(self) -> bool:
        """Whether the response head was sent (an error can no longer be answered)."""
        return self._started

    def set_producer(self, transport: asyncio.BaseTransport | None) -> None:
        """Pause ``transport``'s reading while the client is slower than it (back-pressure)."""
        self._producer = transport
        if transport is not None and self._write_paused:
            transport.pause_reading()  # type: ignore[attr-defined]

    def tunnel(self, on_data: Callable[[bytes], None]) -> bytes:
        """Switch to raw bytes (after a ``101``): from now on every byte the client sends goes
        to ``on_data`` (``b""`` at the end); returns what already arrived after the head."""
        self.flush()
        self._tunnel = on_data
        rest, self._upgrade_rest = self._upgrade_rest, b""
        self._resume_reading()
        return rest

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the client as they are (a tunnel)."""
        self._write(data)

    def abort(self) -> None:
        """Drop the connection at once (a response cannot be completed)."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after what was written has been flushed."""
        if self.transport is not None:
            self.transport.close()

    def _write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    # -------------------------------------------------------------- errors and timers

    def _refuse(self, error: ProxyError) -> None:
        """A request the parser (or a limit) refused: answer if we still can, then close."""
        self._cancel_timer()
        self._pause_reading()
        current = self._current
        if current is not None and not current.body.complete:
            current.body._fail(error)  # the handler answers it (or has already answered)
            self._close_after = True
            return
        if current is None and not self._queue:
            self._current = Request(
                "GET", "/", [], Body(self), client=self.client, keep_alive=False
            )
            self.respond_error(error, _request_id(_decoded(self._raw_headers)))
            self._current = None
        if self.transport is not None:
            self.transport.close()

    # One lazy timer per connection: arming only records what is due and when; the loop's
    # timer is re-scheduled only when it would fire too late, and a timer that fires early
    # re-schedules itself. Re-arming on every request costs two attribute writes.

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        # (inlined where it runs per request: data_received, finish)
        due = self._loop.time() + seconds
        self._due = due
        self._on_due = callback
        if self._timer_at > due:
            self._schedule(due)

    def _schedule(self, due: float) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
        self._timer = self._loop.call_at(due, self._fire)
        self._timer_at = due

    def _cancel_timer(self) -> None:
        self._on_due = None

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = _NEVER
        callback = self._on_due
        if callback is None or self._closed:
            return
        if self._loop.time() < self._due:
            self._schedule(self._due)
            return
        self._on_due = None
        callback()

    def _on_idle(self) -> None:
        if self._current is None and not self._in_head and self.transport is not None:
            self.transport.close()

    def _on_slow_head(self) -> None:
        if self._in_head or (self._current is None and not self._queue):
            self._refuse(ProxyError("request_timeout", "the request head did not arrive in time"))

    def _on_slow_body(self) -> None:
        current = self._current
        if current is not None and not current.body.complete:
            current.body._fail(ProxyError("request_timeout", "the request body stalled"))
            self._close_after = True

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self._closed:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self._closed:
            self._read_paused = False
            self.transport.resume_reading()


#: ``HTTP/1.1 <status> <phrase>\r\n`` by status, made once each
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        text = status_text(status)
        if not text:
            try:
                text = HTTPStatus(status).phrase
            except ValueError:
                text = "Status"
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, text.encode())
    return line


def _request_id(headers: list[tuple[str, str]]) -> str:
    from interlink.context import valid_correlation_id

    for key, value in headers:
        if key == "x-request-id" and valid_correlation_id(value):
            return value
    return new_correlation_id()
