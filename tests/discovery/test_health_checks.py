"""Active health checks over HTTP and the gRPC health protocol."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _discovery_support import unique
from support import free_port, until

from interlink.discovery import Resolver, ServiceInstance
from interlink.discovery.backends.memory import MemoryRegistry
from interlink.discovery.health import HealthCheck, check_grpc, check_http

pytestmark = pytest.mark.anyio


class HealthServer:
    """A tiny HTTP server whose /healthz answers ``status``."""

    def __init__(self) -> None:
        self.status = 200

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()).strip():
            pass
        code = self.status if line.split()[1] == b"/healthz" else 404
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[HealthServer, int]]:
    state = HealthServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    yield state, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_http_check_reads_the_status(health_server: tuple[HealthServer, int]) -> None:
    """2xx is healthy; 503, a wrong path and a closed port are not."""
    state, port = health_server
    instance = ServiceInstance("svc", "a", "127.0.0.1", port)
    assert await check_http(instance)
    assert not await check_http(instance, "/other")
    state.status = 503
    assert not await check_http(instance)
    assert not await check_http(ServiceInstance("svc", "b", "127.0.0.1", free_port()))


async def test_resolver_takes_failing_instances_out_and_back(
    health_server: tuple[HealthServer, int],
) -> None:
    """Two failed checks take an instance out of rotation; one success brings it back."""
    state, port = health_server
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(ServiceInstance(svc, "a", "127.0.0.1", port), ttl=60)
    await registry.register(ServiceInstance(svc, "b", "127.0.0.1", port), ttl=60)
    check = HealthCheck(interval=0.02, timeout=0.2)
    async with Resolver(registry, health=check) as resolver:
        await resolver.prefetch(svc)
        state.status = 503
        await until(lambda: not any(e.healthy for e in resolver.endpoints(svc)))
        state.status = 200
        await until(lambda: all(e.healthy for e in resolver.endpoints(svc)))
        assert resolver.pick(svc).instance.service == svc
    await registry.aclose()


def test_health_check_options_are_validated() -> None:
    """Bad check settings name the field."""
    with pytest.raises(ValueError, match="'interval' must be a finite number > 0: 0"):
        HealthCheck(interval=0)
    with pytest.raises(ValueError, match="'path' must start with '/': 'healthz'"):
        HealthCheck(path="healthz")


async def test_grpc_health_protocol() -> None:
    """The standard grpc.health.v1 Check: SERVING is healthy, NOT_SERVING and absent are not."""
    import grpc
    import grpc.aio

    status = {"": b"\x08\x01", "down": b"\x08\x02"}

    async def check(request: bytes, context: Any) -> bytes:
        service = request[2:].decode() if request else ""
        if service not in status:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return status[service]

    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        instance = ServiceInstance("svc", "g", "127.0.0.1", port, protocol="grpc")
        assert await check_grpc(instance)
        assert not await check_grpc(instance, "down")
        assert not await check_grpc(instance, "missing")
        assert await HealthCheck().check(instance)
    finally:
        await server.stop(0)
