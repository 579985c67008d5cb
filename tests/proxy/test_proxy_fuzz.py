"""Property-based fuzzing of the request parser and the router: whatever bytes arrive, the
gateway answers (or closes) promptly, never with a 5xx of its own, and never crashes."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from proxy_support import LoopThread, route, start_proxy, table

from interlink.proxy import Limits, ProxyError, normalise_path

PATH_CHARS = st.sampled_from([*"/abc.%2F5c00~-_?#=&;:@!$'()*+, ", "..", "%2e", "%00", "\\"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW", ""])
HEADER_NAMES = st.sampled_from(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "x-request-id",
        "traceparent",
        "x-request-timeout-ms",
        "upgrade",
        "expect",
        "x-a",
        "",
    ]
)
HEADER_VALUES = st.one_of(
    st.sampled_from(["0", "5", "-1", "chunked", "close", "keep-alive", "abc", "00-x", "1e3"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = "/" + "".join(draw(st.lists(PATH_CHARS, max_size=12)))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "XYZ"]))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    body = draw(st.binary(max_size=64))
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers]
    head = "\r\n".join(lines).encode("latin-1", "replace")
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def port(loop_thread: LoopThread, upstream: str) -> Iterator[int]:
    routes = table(
        [
            route("orders", "/orders/{id}", upstream, methods=["GET"]),
            route("api", "/api", upstream, rewrite="/"),
            route("root", "/", upstream),
        ]
    )
    _, server, port = loop_thread.run(
        start_proxy(routes, Limits(head_timeout=1.0, body_timeout=1.0))
    )
    yield port
    loop_thread.close_server(server)


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # nothing more is coming: a half-sent request must end
        chunks = []
        while chunk := sock.recv(65536):  # a hang raises TimeoutError and fails the test
            chunks.append(chunk)
        return b"".join(chunks)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.lists(raw_requests(), min_size=1, max_size=3).map(b"".join))
def test_no_gateway_5xx_no_hang(port: int, data: bytes) -> None:
    """One to three (pipelined) requests of any shape: every answer is below 500, and the
    connection ends promptly once the client stops sending."""
    reply = _exchange(port, data)
    for response in reply.split(b"HTTP/1.1 ")[1:]:
        status = int(response[:3])
        assert status < 500, reply[:300]


@given(
    st.lists(st.sampled_from([*"/a.%2F5cE0\\", "..", "%2e%2e", "%41"]), max_size=30).map("".join)
)
def test_normalise_path_is_canonical(raw: str) -> None:
    """A normalised path starts with '/', holds no dot segments or empty segments, is stable
    under a second normalisation, or the path is refused with 400."""
    try:
        path = normalise_path("/" + raw)
    except ProxyError as error:
        refused = error
    else:
        refused = None
    if refused is not None:
        assert refused.status == 400
        return
    assert path.startswith("/")
    segments = path.split("/")[1:-1] if path.endswith("/") else path.split("/")[1:]
    assert ".." not in segments
    assert "." not in segments
    assert "" not in segments or path == "/"
    assert normalise_path(path) == path
