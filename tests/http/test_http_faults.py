"""The clients against misbehaving servers, written with raw sockets: one attempt is one request
on the wire, and the deadline bounds the whole call, however the server trickles its answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import pytest
from support import read_head
from test_http_middleware import Recorder, call, status_of

from interlink import deadline
from interlink.context import valid_correlation_id
from interlink.errors import BudgetExhausted, DeadlineExceeded, TransportError
from interlink.http import AsyncClient, Client, InterlinkMiddleware, ServicePolicies
from interlink.http import client as http_client
from interlink.http.propagation import MAX_TIMEOUT_DIGITS, MAX_TIMEOUT_MS, attempt_ms
from interlink.tracing.propagation import BoundedWarnings

Handler = Callable[[socket.socket], None]


class RawServer:
    """A loopback server running ``handler`` on each connection in a thread of its own;
    ``connections`` counts the connections accepted."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.settimeout(5)
            self.handler(conn)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()


def read_request(conn: socket.socket) -> None:
    """Read one request's head (these tests send no bodies)."""
    read_head(conn)


def close_without_answer(conn: socket.socket) -> None:
    """Read the request, then close: aiohttp sees 'server disconnected'."""
    read_request(conn)


def trickle_body(conn: socket.socket) -> None:
    """Headers at once, then one body byte every 200 ms (100 bytes: 20 s)."""
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        time.sleep(0.2)
        conn.sendall(b"x")


def trickle_head(conn: socket.socket) -> None:
    """The status line and headers one byte every 200 ms."""
    read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        time.sleep(0.2)
        conn.sendall(bytes([byte]))


@pytest.fixture(params=[True, False], ids=["resend-switch", "middleware"])
def resend_switch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways the async client stops aiohttp's own resend: the session's attribute (when
    this aiohttp has it) and the public client middleware (forced here)."""
    if request.param and not http_client.RESEND_SWITCH:
        pytest.skip("this aiohttp has no resend switch")
    monkeypatch.setattr(http_client, "RESEND_SWITCH", request.param)
    return bool(request.param)


def policies(retries: int, **more: object) -> ServicePolicies:
    return ServicePolicies(
        retries=retries,
        backoff=0.0005,
        max_backoff=0.001,
        breaker=False,
        **more,  # type: ignore[arg-type]
    )


def async_get_count(url: str, retries: int, calls: int = 1, **more: object) -> None:
    async def go() -> None:
        async with AsyncClient(url, policies=policies(retries, **more)) as client:

            async def one() -> None:
                with contextlib.suppress(TransportError, BudgetExhausted):
                    await client.get("/x")

            await asyncio.gather(*(one() for _ in range(calls)))

    asyncio.run(go())


# --------------------------------------------------------------- one attempt, one request


@pytest.mark.parametrize(("retries", "expected"), [(0, 1), (2, 3)])
def test_async_attempt_is_one_connection(resend_switch: bool, retries: int, expected: int) -> None:
    """A server that closes without answering sees 1 + retries connections, not twice that."""
    with RawServer(close_without_answer) as server:
        async_get_count(server.url, retries)
    assert server.connections == expected


def test_async_storm_stays_within_the_budget(resend_switch: bool) -> None:
    """100 GETs, 3 retries each, ratio 0.2 + 1/s over 10 s: at most 130 connections."""
    with RawServer(close_without_answer) as server:
        async_get_count(
            server.url,
            3,
            calls=100,
            budget_ratio=0.2,
            budget_min_per_second=1.0,
            budget_ttl=10.0,
        )
    assert 100 <= server.connections <= 130


@pytest.mark.parametrize(("retries", "expected"), [(0, 1), (2, 3)])
def test_sync_attempt_is_one_connection(retries: int, expected: int) -> None:
    """The blocking client too: 1 + retries connections."""
    with RawServer(close_without_answer) as server, Client(server.url) as client:
        client.service(server.url.split("://")[1], policies=policies(retries))
        with pytest.raises(TransportError):
            client.get("/x")
    assert server.connections == expected


# ------------------------------------------------------------- the deadline bounds the call


def timed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    t0 = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return time.monotonic() - t0, exc
    return time.monotonic() - t0, None


@pytest.mark.parametrize("handler", [trickle_body, trickle_head], ids=["body", "head"])
def test_sync_trickle_ends_at_the_deadline(handler: Handler) -> None:
    """A byte every 200 ms: the call ends at its 0.5 s timeout, not when the answer is done."""
    with RawServer(handler) as server, Client(policies=policies(0, timeout=0.5)) as client:
        took, error = timed(lambda: client.get(server.url + "/x"))
    assert isinstance(error, DeadlineExceeded)
    assert 0.45 <= took < 3.0  # a 20 s answer, cut off at 0.5 s (generous: a busy machine)


@pytest.mark.parametrize("trickle", [trickle_body, trickle_head], ids=["body", "head"])
def test_sync_trickle_ends_at_the_deadline_on_a_pooled_connection(trickle: Handler) -> None:
    """The second call reuses the first one's keep-alive connection, on which the server
    trickles the body or the status line and headers: still cut off at the deadline."""

    def ok_then_trickle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        trickle(conn)

    with RawServer(ok_then_trickle) as server, Client(policies=policies(0, timeout=0.5)) as client:
        assert client.get(server.url + "/x").status == 200
        took, error = timed(lambda: client.get(server.url + "/x"))
    assert server.connections == 1
    assert isinstance(error, DeadlineExceeded)
    assert 0.45 <= took < 3.0  # a 20 s answer, cut off at 0.5 s (generous: a busy machine)


def test_sync_trickle_ends_at_the_deadline_in_threads() -> None:
    """Four threads sharing one client, each call cut off at its own deadline."""
    took: list[float] = []
    with RawServer(trickle_body) as server, Client(policies=policies(0, timeout=0.5)) as client:

        def one() -> None:
            took.append(timed(lambda: client.get(server.url + "/x"))[0])

        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert len(took) == 4
    assert all(0.45 <= t < 3.0 for t in took), took


def test_sync_attempt_timeout_bounds_each_attempt() -> None:
    """``attempt_timeout`` (no call timeout) bounds a trickling attempt the same way."""
    with RawServer(trickle_body) as server:
        client = Client(policies=policies(0, timeout=None, attempt_timeout=0.5))
        with client:
            took, error = timed(lambda: client.get(server.url + "/x"))
    assert isinstance(error, DeadlineExceeded)
    assert 0.45 <= took < 3.0  # a 20 s answer, cut off at 0.5 s (generous: a busy machine)


def test_async_trickle_ends_at_the_deadline() -> None:
    """The async client, for comparison: the same 0.5 s."""

    async def go() -> None:
        async with AsyncClient(policies=policies(0, timeout=0.5)) as client:
            await client.get(server.url + "/x")

    with RawServer(trickle_body) as server:
        took, error = timed(lambda: asyncio.run(go()))
    assert isinstance(error, DeadlineExceeded)
    assert 0.45 <= took < 3.0  # a 20 s answer, cut off at 0.5 s (generous: a busy machine)


# ------------------------------------------------------------------ what the callee accepts


def test_a_huge_deadline_is_sent_as_the_longest_value_accepted() -> None:
    """``deadline(1e8)`` is 12 digits of ms; the client sends at most what the middleware
    takes, so the call is answered, not refused with a 400."""
    with deadline(1e8):
        assert attempt_ms(None, "x") == MAX_TIMEOUT_MS
    assert len(str(MAX_TIMEOUT_MS)) == MAX_TIMEOUT_DIGITS
    app = Recorder()
    sent = call(InterlinkMiddleware(app), [(b"x-request-timeout-ms", str(MAX_TIMEOUT_MS).encode())])
    assert status_of(sent) == 200


def test_a_correlation_id_must_match_whole() -> None:
    """A trailing newline is not part of a valid id (``$`` would match before it)."""
    assert valid_correlation_id("abc")
    assert not valid_correlation_id("abc\n")
    assert not valid_correlation_id("\nabc")


# ----------------------------------------------------------- garbage trace headers, bounded


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"baggage", b"g" * 10_000),
        (b"baggage", b"k=v," + b"x" * 4000),
        (b"traceparent", b"z" * 9000),
    ],
)
def test_garbage_trace_headers_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture, name: bytes, value: bytes
) -> None:
    """50 requests with a 4-10 KB malformed header log well under 1 KB in all, not 50 lines
    holding the header."""
    pytest.importorskip("opentelemetry")
    middleware = InterlinkMiddleware(Recorder())
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        for _ in range(50):
            assert status_of(call(middleware, [(name, value)])) == 200
    logged = sum(len(r.getMessage()) for r in caplog.records if r.name.startswith("opentelemetry"))
    assert logged < 1000


def test_bounded_warnings_pass_one_line_per_interval() -> None:
    """One line per message per interval, the header cut, the dropped lines counted."""
    now = [0.0]
    bound = BoundedWarnings(interval=10.0, width=8, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, "f", 1, "bad `%s`", ("y" * 100,), None)

    first = record()
    assert bound.filter(first)
    assert first.getMessage() == "bad `'yyyyyyyy'... (100 characters)`"
    assert not bound.filter(record())
    assert not bound.filter(record())
    now[0] = 10.0
    later = record()
    assert bound.filter(later)
    assert "(2 more like it in the last 10 s)" in later.getMessage()
