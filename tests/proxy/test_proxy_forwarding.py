"""The engine against a real upstream: forwarding, headers, streaming, errors with reasons."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from proxy_support import (
    LoopThread,
    accept_forever,
    raw,
    route,
    start_proxy,
    status_and_json,
    table,
)
from support import read_head

from interlink.proxy import Limits, Policies, Proxy, RouteTable
from interlink.resilience import CircuitBreaker


@pytest.fixture(scope="module")
def gateway(loop_thread: LoopThread, upstream: str) -> Iterator[tuple[Proxy, str]]:
    dead = _dead_url()
    routes = table(
        [
            route("orders", "/orders/{id}", upstream, methods=["GET"], rewrite="/v1/orders/{id}"),
            route("api", "/api", upstream, rewrite="/"),
            route("by-host", "/", upstream, hosts=["admin.example.com"], rewrite="/host-route"),
            route("beta", "/beta", upstream, headers={"x-beta": "1"}),
            route("dead", "/dead", dead),
            route(
                "slow",
                "/slow",
                upstream,
                timeout=0.3,
            ),
            route(
                "fragile",
                "/fragile",
                upstream,
                rewrite="/status",
                policies=Policies(
                    CircuitBreaker(
                        "fragile", minimum_calls=3, failure_rate_threshold=0.5, cooldown=60
                    ),
                    name="fragile",
                ),
            ),
            route("stream", "/stream", upstream),
            route("big", "/big", upstream),
            route("drop", "/drop", upstream),
        ]
    )
    proxy, server, port = loop_thread.run(
        start_proxy(
            routes, Limits(max_header_bytes=4096, max_body_bytes=1_000_000, head_timeout=0.5)
        )
    )
    yield proxy, f"http://127.0.0.1:{port}"
    loop_thread.close_server(server)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _get(base: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.get(base + path, timeout=10, **kw)


def test_template_route_rewrites_the_path(gateway: tuple[Proxy, str]) -> None:
    """/orders/{id} goes upstream as /v1/orders/{id}, query kept."""
    _, base = gateway
    response = _get(base, "/orders/42?x=1")
    assert response.status_code == 200
    assert response.json()["path"] == "/v1/orders/42?x=1"


def test_prefix_route_strips_its_prefix(gateway: tuple[Proxy, str]) -> None:
    """A prefix route with rewrite '/' drops the prefix."""
    _, base = gateway
    assert _get(base, "/api/menu/3").json()["path"] == "/menu/3"


def test_method_not_allowed_is_405_with_allow(gateway: tuple[Proxy, str]) -> None:
    """A path whose route refuses the method answers 405 and names what is allowed."""
    _, base = gateway
    response = httpx.post(base + "/orders/42", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    body = response.json()
    assert body["reason"] == "method_not_allowed"
    assert body["request_id"] == response.headers["x-request-id"]


def test_host_and_header_matching(gateway: tuple[Proxy, str]) -> None:
    """Host and header conditions select their routes."""
    _, base = gateway
    by_host = _get(base, "/x", headers={"host": "admin.example.com"})
    assert by_host.json()["path"] == "/host-route/x"
    assert _get(base, "/beta", headers={"x-beta": "1"}).json()["path"] == "/beta"


def test_correlation_id_is_assigned_propagated_and_echoed(gateway: tuple[Proxy, str]) -> None:
    """Without x-request-id the gateway makes one; the upstream and the client see the same."""
    _, base = gateway
    response = _get(base, "/api/x")
    rid = response.headers["x-request-id"]
    assert len(rid) == 32
    upstream_headers = response.json()["headers"]
    assert upstream_headers["x-request-id"] == rid
    assert upstream_headers["traceparent"] == response.headers["traceparent"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", response.headers["traceparent"])
    assert response.reason_phrase == "OK"


def test_incoming_correlation_and_trace_are_continued(gateway: tuple[Proxy, str]) -> None:
    """A client's id is kept; its trace continues with a new span of the gateway's."""
    _, base = gateway
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = _get(base, "/api/x", headers={"x-request-id": "abc-123", "traceparent": parent})
    assert response.headers["x-request-id"] == "abc-123"
    sent = response.json()["headers"]["traceparent"]
    assert re.fullmatch(r"00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01", sent)
    assert sent != parent


@pytest.mark.parametrize(
    ("incoming", "continued"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", False),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
    ],
)
def test_incoming_trace_is_read_by_the_w3c_rules(
    gateway: tuple[Proxy, str], incoming: str, continued: bool
) -> None:
    """The gateway reads a traceparent as tracing's extract does: a later version continues
    (sent on as version 00, its flags kept), a malformed one starts a new trace."""
    _, base = gateway
    response = _get(base, "/api/x", headers={"traceparent": incoming})
    sent = response.json()["headers"]["traceparent"]
    assert sent == response.headers["traceparent"]
    if continued:
        flags = incoming[53:55]
        assert re.fullmatch(rf"00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{{16}}-{flags}", sent)
    else:
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", sent)
        assert "0af7651916cd43dd8448eb211c80319c" not in sent


def test_hop_by_hop_headers_are_stripped(gateway: tuple[Proxy, str]) -> None:
    """Connection, Keep-Alive, TE and names listed in Connection do not cross the proxy."""
    _, base = gateway
    response = _get(
        base,
        "/api/x",
        headers={"connection": "keep-alive, x-secret", "x-secret": "1", "te": "trailers"},
    )
    seen = response.json()["headers"]
    assert "x-secret" not in seen
    assert "te" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"


class _FixedAnswer:
    """A raw upstream that answers every request on a connection with the same bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        accept_forever(self.listener, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                data = data.split(b"\r\n\r\n", 1)[1]
                conn.sendall(self.answer)


def test_hop_by_hop_response_headers_are_stripped(loop_thread: LoopThread) -> None:
    """The upstream's Connection, Keep-Alive, names listed in Connection (any case, folded
    or not) and its own x-request-id do not reach the client; the rest does, as sent, after
    an interim 100 Continue."""
    upstream = _FixedAnswer(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nX-Kept: 1\r\nConnection: keep-alive, X-Internal\r\n"
        b"Keep-Alive: timeout=5\r\nX-Internal: secret\r\nX-Request-Id: upstream-id\r\n"
        b"Content-Length: 2\r\nX-Also-Kept: 2\r\n\r\nok"
    )
    routes = table([route("fixed", "/", upstream.url)])
    proxy, server, port = loop_thread.run(start_proxy(routes, Limits()))
    try:
        for _ in range(2):  # the second on a pooled connection
            response = httpx.get(
                f"http://127.0.0.1:{port}/x", headers={"x-request-id": "client-id"}, timeout=10
            )
            assert response.status_code == 201
            assert response.text == "ok"
            assert response.headers["x-kept"] == "1"
            assert response.headers["x-also-kept"] == "2"
            assert response.headers["x-request-id"] == "client-id"
            for name in ("x-internal", "keep-alive"):
                assert name not in response.headers
            assert response.headers.get("connection", "keep-alive") == "keep-alive"
    finally:
        loop_thread.close_server(server)
        loop_thread.run(_close_pool(proxy))
        upstream.listener.close()


async def _close_pool(proxy: Proxy) -> None:
    proxy.pool.close()
    await asyncio.sleep(0.05)  # the aborted transports close on the next turns of the loop


def test_client_deadline_is_propagated(gateway: tuple[Proxy, str]) -> None:
    """x-request-timeout-ms reaches the upstream, not larger than the client sent."""
    _, base = gateway
    response = _get(base, "/api/x", headers={"x-request-timeout-ms": "5000"})
    assert 0 < int(response.json()["headers"]["x-request-timeout-ms"]) <= 5000


def test_post_body_is_forwarded(gateway: tuple[Proxy, str]) -> None:
    """A body reaches the upstream byte for byte, also when sent chunked."""
    _, base = gateway
    assert httpx.post(base + "/api/x", content=b"hello", timeout=10).json()["body"] == "hello"

    def chunks() -> Iterator[bytes]:
        yield b"a" * 100_000
        yield b"b" * 100_000

    response = httpx.post(base + "/api/x", content=chunks(), timeout=10)
    assert response.json()["body"] == "a" * 100_000 + "b" * 100_000


def test_response_streams(gateway: tuple[Proxy, str]) -> None:
    """A server-sent event stream passes through, event by event."""
    _, base = gateway
    with httpx.stream("GET", base + "/stream", timeout=10) as response:
        assert response.headers["content-type"] == "text/event-stream"
        text = b"".join(response.iter_bytes()).decode()
    assert text == "".join(f"data: {i}\n\n" for i in range(5))


def test_large_response(gateway: tuple[Proxy, str]) -> None:
    """A 5 MB body arrives whole."""
    _, base = gateway
    assert len(_get(base, "/big/5000000").content) == 5_000_000


def test_no_route_is_404(gateway: tuple[Proxy, str]) -> None:
    """No route: 404 no_route, JSON."""
    _, base = gateway
    response = _get(base, "/nothing-here")
    assert response.status_code == 404
    assert response.json()["reason"] == "no_route"
    status, body = status_and_json(
        raw(int(base.rsplit(":", 1)[1]), b"GET * HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    assert status == 400
    assert body["reason"] == "invalid_path"


def test_connect_refused_is_502(gateway: tuple[Proxy, str]) -> None:
    """An upstream nobody listens on: 502 upstream_connect_refused."""
    _, base = gateway
    response = _get(base, "/dead")
    assert response.status_code == 502
    assert response.json()["reason"] == "upstream_connect_refused"


def test_upstream_timeout_is_504(gateway: tuple[Proxy, str]) -> None:
    """A route timeout: 504 upstream_timeout."""
    _, base = gateway
    response = _get(base, "/slow/2000")
    assert response.status_code == 504
    assert response.json()["reason"] == "upstream_timeout"


def test_client_deadline_caps_the_route(gateway: tuple[Proxy, str]) -> None:
    """A client deadline shorter than the route's timeout wins."""
    _, base = gateway
    response = _get(base, "/slow/250", headers={"x-request-timeout-ms": "50"})
    assert response.status_code == 504


def test_upstream_reset_is_502(gateway: tuple[Proxy, str]) -> None:
    """An upstream that drops the connection: 502 upstream_reset."""
    _, base = gateway
    response = _get(base, "/drop")
    assert response.status_code == 502
    assert response.json()["reason"] == "upstream_reset"


def test_breaker_opens_to_503(gateway: tuple[Proxy, str]) -> None:
    """Upstream 5xx are relayed; once the breaker opens: 503 circuit_open."""
    _, base = gateway
    seen = [_get(base, "/fragile/500") for _ in range(5)]
    assert seen[0].status_code == 500
    assert seen[0].json() == {"status": "from upstream"}
    assert seen[-1].status_code == 503
    assert seen[-1].json()["reason"] == "circuit_open"


def test_smuggling_is_refused(gateway: tuple[Proxy, str]) -> None:
    """Two Content-Lengths, or Content-Length with Transfer-Encoding: 400 ambiguous_length."""
    _, base = gateway
    port = int(base.rsplit(":", 1)[1])
    for attack in (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ):
        status, body = status_and_json(raw(port, attack))
        assert status == 400, attack
        assert body["reason"] == "ambiguous_length"


def test_path_tricks_are_refused_or_normalised(gateway: tuple[Proxy, str]) -> None:
    """Dot segments resolve; encoded slashes and climbing above the root are refused."""
    _, base = gateway
    port = int(base.rsplit(":", 1)[1])
    ok = raw(port, b"GET /x/../orders/7 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    status, body = status_and_json(ok)
    assert status == 200
    assert body["path"] == "/v1/orders/7"
    for path in (b"/api/..%2F..%2Fetc", b"/../etc/passwd", b"/api/%00"):
        status, body = status_and_json(
            raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        )
        assert status == 400, path
        assert body["reason"] == "invalid_path"


def test_header_and_body_limits(gateway: tuple[Proxy, str]) -> None:
    """A head over the limit: 431; a body over it: 413."""
    _, base = gateway
    response = _get(base, "/api/x", headers={"x-big": "a" * 5000})
    assert response.status_code == 431
    assert response.json()["reason"] == "headers_too_large"
    response = httpx.post(base + "/api/x", content=b"a" * 1_000_001, timeout=10)
    assert response.status_code == 413
    assert response.json()["reason"] == "body_too_large"


def test_slowloris_gets_408(gateway: tuple[Proxy, str]) -> None:
    """A head that does not complete within head_timeout: 408 and the connection closed."""
    _, base = gateway
    port = int(base.rsplit(":", 1)[1])
    status, body = status_and_json(
        raw(port, b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Slow: ", timeout=10)
    )
    assert status == 408
    assert body["reason"] == "request_timeout"


def test_keep_alive_reuses_upstream_connections(gateway: tuple[Proxy, str]) -> None:
    """Twenty requests open far fewer than twenty upstream connections."""
    proxy, base = gateway
    with httpx.Client(base_url=base, timeout=10) as client:
        client.get("/api/warm")
        before = proxy.pool.opened
        for _ in range(20):
            assert client.get("/api/x").status_code == 200
    assert proxy.pool.opened - before <= 2


def test_swap_table_is_atomic(gateway: tuple[Proxy, str], upstream: str) -> None:
    """Assigning a new table changes routing for the next request."""
    proxy, base = gateway
    old = proxy.table
    try:
        proxy.table = RouteTable(router=table([route("only", "/only", upstream)]).router)
        assert _get(base, "/api/x").status_code == 404
        assert _get(base, "/only").status_code == 200
    finally:
        proxy.table = old


def test_error_body_shape(gateway: tuple[Proxy, str]) -> None:
    """Every error body has exactly error, reason, status and request_id."""
    _, base = gateway
    body = json.loads(_get(base, "/dead").content)
    assert set(body) == {"error", "reason", "status", "request_id"}
    assert body["status"] == 502


def test_spans_recorded_with_an_sdk(loop_thread: LoopThread, upstream: str) -> None:
    """With an OpenTelemetry SDK, each request is a SERVER span in the client's trace, and its
    context is what the upstream and the client see."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))

    async def start() -> tuple[Proxy, Any]:
        proxy = Proxy(
            table([route("api", "/api", upstream, rewrite="/")]), tracer_provider=provider
        )
        return proxy, await proxy.serve("127.0.0.1", 0)

    _, server = loop_thread.run(start())
    try:
        port = server.sockets[0].getsockname()[1]
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/x", headers={"traceparent": parent}, timeout=10
        )
        deadline = time.monotonic() + 10
        while not exported.get_finished_spans() and time.monotonic() < deadline:
            time.sleep(0.01)  # the span ends just after the response's last byte
    finally:
        loop_thread.close_server(server)
    (span,) = exported.get_finished_spans()
    assert span.name == "GET api"
    assert span.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert span.attributes["http.response.status_code"] == 200
    sent = response.json()["headers"]["traceparent"]
    assert sent == response.headers["traceparent"]
    assert sent.split("-")[2] == f"{span.context.span_id:016x}"


def test_a_handler_defect_is_a_json_500(loop_thread: LoopThread) -> None:
    """A translator that raises: 500 internal_error as JSON, the connection still usable."""

    async def broken(*_: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        raise RuntimeError("a bug")

    from interlink.proxy import Route, Router, RouteSpec

    routes = RouteTable(
        router=Router([Route(name="b", path="/", target=RouteSpec(name="b", translator=broken))])
    )
    _, server, port = loop_thread.run(start_proxy(routes))
    try:
        with httpx.Client(timeout=10) as client:
            first = client.get(f"http://127.0.0.1:{port}/x")
            second = client.get(f"http://127.0.0.1:{port}/y")
    finally:
        loop_thread.close_server(server)
    assert (first.status_code, first.json()["reason"]) == (500, "internal_error")
    assert "a bug" not in first.text
    assert second.status_code == 500


class SecondAnswer:
    """Answers a connection's first request with ``ok`` (kept alive) and its second with
    ``second``, sent in one write: what the proxy's pooled, answered-from-callbacks requests
    (the second on a connection) then read in one go."""

    def __init__(self, second: bytes) -> None:
        self.second = second
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        accept_forever(self.listener, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            for answer in (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", self.second):
                if not read_head(conn):
                    return
                conn.sendall(answer)
            time.sleep(0.5)


def _through_proxy(
    loop_thread: LoopThread, second: bytes, requests: int
) -> list[tuple[int, bytes] | str]:
    """Send ``requests`` GETs on one client connection through a proxy to ``SecondAnswer``:
    each one's status and body, or the name of the error that reading it raised."""
    upstream = SecondAnswer(second)
    routes = table([route("r", "/", f"http://127.0.0.1:{upstream.port}")])
    proxy, server, port = loop_thread.run(start_proxy(routes))
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out: list[tuple[int, bytes] | str] = []
    try:
        for _ in range(requests):
            client.request("GET", "/")
            response = client.getresponse()
            try:
                out.append((response.status, response.read()))
            except (http.client.HTTPException, ValueError, ConnectionError) as error:
                out.append(f"{response.status} {type(error).__name__}")
                break
    finally:
        client.close()
        loop_thread.close_server(server)
        proxy.pool.close()
        upstream.listener.close()
    return out


def test_an_answer_broken_in_the_read_that_brought_its_head_is_cut_off(
    loop_thread: LoopThread,
) -> None:
    # the head and a chunk, then a chunk size that is not one, all in one read: the client
    # gets the head and the chunk, then a dropped connection (never a 502 after a 200)
    second = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
    out = _through_proxy(loop_thread, second, 2)
    assert out[0] == (200, b"ok")
    assert isinstance(out[1], str)
    assert out[1].startswith("200 ")


def test_an_answer_whole_in_one_read_is_relayed_though_garbage_follows_it(
    loop_thread: LoopThread,
) -> None:
    # a whole answer, then bytes that are no answer, in one read: the answer is relayed,
    # the upstream connection dropped, and the next request goes on a fresh one
    second = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\x00\x01garbage\r\n\r\n"
    out = _through_proxy(loop_thread, second, 3)
    assert out == [(200, b"ok"), (200, b"hello"), (200, b"ok")]


def test_repeated_heads_on_one_connection_are_each_forwarded_as_sent(
    gateway: tuple[Proxy, str],
) -> None:
    """Requests with the same headers on one connection (their upstream heads are reused)
    each reach the upstream with their own method, path, ids and headers."""
    _, base = gateway
    seen: list[str] = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path, extra in [
            ("GET", "/api/a", {}),
            ("GET", "/api/a", {}),
            ("GET", "/api/b?q=1", {}),
            ("DELETE", "/api/b", {}),
            ("GET", "/api/a", {"x-extra": "1"}),
            ("GET", "/api/a", {}),
        ]:
            response = client.request(method, path, headers={"x-same": "s", **extra})
            assert response.status_code == 200
            echoed = response.json()
            assert (echoed["method"], echoed["path"]) == (method, path.replace("/api", "", 1))
            assert echoed["headers"]["x-same"] == "s"
            assert echoed["headers"].get("x-extra") == extra.get("x-extra")
            assert echoed["headers"]["x-request-id"] == response.headers["x-request-id"]
            seen.append(echoed["headers"]["x-request-id"])
    assert len(set(seen)) == len(seen)


def test_pipelined_repeated_requests_are_answered_in_order(gateway: tuple[Proxy, str]) -> None:
    """Pipelined requests with the same headers, then one with another header, in one write:
    each is answered in order, with its own path, id and headers upstream."""
    _, base = gateway
    port = int(base.rsplit(":", 1)[1])
    heads = [
        b"GET /api/one HTTP/1.1\r\nHost: h\r\nX-Same: s\r\n\r\n",
        b"GET /api/two HTTP/1.1\r\nHost: h\r\nX-Same: s\r\n\r\n",
        b"GET /api/three HTTP/1.1\r\nHost: h\r\nX-Same: t\r\n\r\n",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(heads))
        data = b""
        answers = []
        while len(answers) < len(heads):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
            while b"\r\n\r\n" in data:
                head, rest = data.split(b"\r\n\r\n", 1)
                size = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                if len(rest) < size:
                    break
                answers.append((head, json.loads(rest[:size])))
                data = rest[size:]
    assert [echoed["path"] for _, echoed in answers] == ["/one", "/two", "/three"]
    assert [echoed["headers"]["x-same"] for _, echoed in answers] == ["s", "s", "t"]
    ids = [echoed["headers"]["x-request-id"] for _, echoed in answers]
    assert len(set(ids)) == 3
    for (head, _), request_id in zip(answers, ids, strict=True):
        assert head.startswith(b"HTTP/1.1 200")
        assert f"x-request-id: {request_id}".encode() in head.lower()
