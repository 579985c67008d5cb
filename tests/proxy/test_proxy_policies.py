"""Per-route policies and connection behaviour: retries, stale pooled connections, bulkheads,
discovery upstreams, WebSocket and CORS."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import httpx
import pytest
from proxy_support import LoopThread, accept_forever, route, start_proxy, table
from support import read_head

from interlink.discovery import Registry, Resolver, ServiceInstance
from interlink.proxy import (
    Cors,
    FixedUpstream,
    Policies,
    PoolLimits,
    Proxy,
    Route,
    RouteSpec,
    ServiceUpstream,
    UpstreamPool,
)
from interlink.resilience import Bulkhead, Retry


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


class OneShotServer:
    """Answers the first request of every connection (keep-alive, by its headers) and closes
    the connection without a word when a second request arrives on it: what a server whose
    idle timeout just fired looks like to a pooled client."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        accept_forever(self.listener, self._serve)

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            if not read_head(conn):
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok"
            )
            conn.recv(65536)  # the second request: closed unanswered

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def oneshot() -> Iterator[OneShotServer]:
    server = OneShotServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    loop_thread: LoopThread, upstream: str, oneshot: OneShotServer
) -> Iterator[tuple[Proxy, str]]:
    dead = _dead_url()
    registry = loop_thread.run(_registry(upstream))
    resolver = Resolver.from_url("memory://proxy-tests")
    routes = table(
        [
            Route(
                name="retried",
                path="/retried",
                rewrite="/",
                target=RouteSpec(
                    name="retried",
                    upstream=FixedUpstream([dead, upstream]),
                    policies=Policies(Retry(2, backoff=0.001, max_backoff=0.01), name="retried"),
                ),
            ),
            route("oneshot", "/oneshot", f"http://127.0.0.1:{oneshot.port}"),
            route(
                "narrow",
                "/slow",
                upstream,
                policies=Policies(Bulkhead(1), name="narrow"),
            ),
            Route(
                name="discovered",
                path="/menu",
                target=RouteSpec(name="discovered", upstream=ServiceUpstream("menu", resolver)),
            ),
            Route(
                name="nobody",
                path="/nobody",
                target=RouteSpec(name="nobody", upstream=ServiceUpstream("nobody", resolver)),
            ),
            route("ws", "/ws", upstream),
            route("cors", "/cors", upstream, cors=True, rewrite="/"),
        ],
        cors=Cors(allow_origins=frozenset({"https://app.example.com"})),
    )
    proxy, server, port = loop_thread.run(start_proxy(routes))
    yield proxy, f"http://127.0.0.1:{port}"
    loop_thread.close_server(server)
    loop_thread.run(resolver.aclose())
    loop_thread.run(registry.aclose())


async def _registry(upstream: str) -> Registry:
    registry = Registry.from_url("memory://proxy-tests")
    port = int(upstream.rsplit(":", 1)[1])
    await registry.register(ServiceInstance("menu", "menu-1", "127.0.0.1", port))
    return registry


def test_retry_moves_past_a_dead_instance(gateway: tuple[Proxy, str]) -> None:
    """Connection refused on one address is retried on the next: every request succeeds."""
    _, base = gateway
    for _ in range(6):
        assert httpx.get(base + "/retried", timeout=10).status_code == 200


def test_stale_pooled_connection_is_replaced(
    gateway: tuple[Proxy, str], oneshot: OneShotServer
) -> None:
    """An idempotent request on a pooled connection the upstream dropped is re-sent on a
    fresh one; the client never sees the drop."""
    _, base = gateway
    with httpx.Client(timeout=10) as client:
        for _ in range(5):
            response = client.get(base + "/oneshot")
            assert response.status_code == 200
            assert response.text == "ok"
    assert oneshot.connections >= 5


def test_non_idempotent_request_is_not_resent(gateway: tuple[Proxy, str]) -> None:
    """A POST whose pooled connection died after it was written: 502 upstream_reset, never
    sent twice."""
    _, base = gateway
    with httpx.Client(timeout=10) as client:
        assert client.get(base + "/oneshot").status_code == 200  # leaves a pooled connection
        response = client.post(base + "/oneshot", content=b"x")
    assert (response.status_code, response.json()["reason"]) == (502, "upstream_reset")


def test_bulkhead_full_is_503(gateway: tuple[Proxy, str]) -> None:
    """A second request while the only bulkhead slot is busy: 503 bulkhead_full."""
    proxy, base = gateway
    first: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: first.append(httpx.get(base + "/slow/1500", timeout=10))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while proxy.in_flight < 1 and time.monotonic() < deadline:  # the slot is taken
        time.sleep(0.01)
    second = httpx.get(base + "/slow/1", timeout=10)
    worker.join(10)
    assert (second.status_code, second.json()["reason"]) == (503, "bulkhead_full")
    assert first[0].status_code == 200


def test_discovery_upstream(gateway: tuple[Proxy, str]) -> None:
    """service://menu resolves through the registry; an unknown service is 503
    no_healthy_instance."""
    _, base = gateway
    assert httpx.get(base + "/menu/1", timeout=10).json()["path"] == "/menu/1"
    response = httpx.get(base + "/nobody", timeout=10)
    assert (response.status_code, response.json()["reason"]) == (503, "no_healthy_instance")


def test_websocket_passes_through(gateway: tuple[Proxy, str]) -> None:
    """A WebSocket upgrade is tunnelled both ways."""
    _, base = gateway

    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as session, session.ws_connect(base + "/ws") as ws:
            replies = []
            for word in ("one", "two"):
                await ws.send_str(word)
                replies.append((await ws.receive(timeout=5)).data)
            return replies

    assert asyncio.run(talk()) == ["echo:one", "echo:two"]


def test_cors(gateway: tuple[Proxy, str]) -> None:
    """An allowed origin gets its preflight answered and its headers; another does not."""
    _, base = gateway
    preflight = httpx.options(
        base + "/cors",
        headers={
            "origin": "https://app.example.com",
            "access-control-request-method": "GET",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "GET" in preflight.headers["access-control-allow-methods"]
    allowed = httpx.get(base + "/cors", headers={"origin": "https://app.example.com"}, timeout=10)
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = httpx.get(base + "/cors", headers={"origin": "https://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers


def test_garbage_from_upstream_is_502(loop_thread: LoopThread) -> None:
    """An upstream that answers something other than HTTP: 502 upstream_bad_response."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    upstream = f"http://127.0.0.1:{listener.getsockname()[1]}"
    _, server, port = loop_thread.run(start_proxy(table([route("odd", "/", upstream)])))
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    finally:
        loop_thread.close_server(server)
        listener.close()
    assert (response.status_code, response.json()["reason"]) == (502, "upstream_bad_response")


def test_pool_full_is_503(loop_thread: LoopThread, upstream: str) -> None:
    """One upstream connection allowed and busy past pool_timeout: 503 upstream_pool_full."""

    async def start() -> tuple[Proxy, Any]:
        proxy = Proxy(
            table([route("slow", "/slow", upstream)]),
            pool=UpstreamPool(PoolLimits(max_connections=1, pool_timeout=0.2)),
        )
        return proxy, await proxy.serve("127.0.0.1", 0)

    proxy, server = loop_thread.run(start())
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        first: list[httpx.Response] = []
        worker = threading.Thread(
            target=lambda: first.append(httpx.get(base + "/slow/1500", timeout=10))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while proxy.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = httpx.get(base + "/slow/1", timeout=10)
        worker.join(10)
    finally:
        loop_thread.close_server(server)
    assert (second.status_code, second.json()["reason"]) == (503, "upstream_pool_full")
    assert first[0].status_code == 200


def test_metrics_show_breaker_state(gateway: tuple[Proxy, str]) -> None:
    """The metrics text carries per-route counters and errors by reason."""
    proxy, base = gateway
    httpx.get(base + "/nobody", timeout=10)
    text = proxy.metrics.render()
    assert (
        'interlink_proxy_upstream_errors_total{route="nobody",reason="no_healthy_instance"}' in text
    )
    assert 'interlink_proxy_requests_total{route="nobody",status="503"}' in text
