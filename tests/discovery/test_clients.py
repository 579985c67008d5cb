"""The HTTP and gRPC clients resolve ``service://name`` through interlink.discovery.Resolver.

One live instance and one whose port is closed: every call succeeds (the failed attempt is
retried on the live one), the failures reach the resolver through ``Picked.done(False)``, and
passive ejection takes the dead instance out of rotation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _discovery_support import unique
from support import free_port

from interlink.discovery import OutlierOptions, Resolver, ServiceInstance
from interlink.discovery.backends.memory import MemoryRegistry

pytestmark = pytest.mark.anyio

# Two failures in a row eject, so a few calls are enough whoever the balancer picks first.
OUTLIER = OutlierOptions(consecutive_failures=2)


async def serve_ok(host: str, port: int) -> Any:
    """An aiohttp server answering ``GET /ok`` on ``host:port``; returns its runner."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_echo(address: str) -> tuple[Any, int]:
    """A grpc.aio server whose ``/test.Echo/Call`` returns its request; returns it and its
    port."""
    import grpc
    import grpc.aio

    async def call(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = server.add_insecure_port(address)
    await server.start()
    return server, port


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    """An aiohttp server answering ``GET /ok``."""
    port = free_port()
    runner = await serve_ok("127.0.0.1", port)
    yield port
    await runner.cleanup()


@pytest.fixture
async def grpc_port() -> AsyncIterator[int]:
    """A grpc.aio server whose ``/test.Echo/Call`` returns its request."""
    server, port = await serve_echo(f"127.0.0.1:{free_port()}")
    yield port
    await server.stop(0)


async def registry_of(svc: str, live: int, protocol: str) -> MemoryRegistry:
    registry = MemoryRegistry()
    await registry.register(ServiceInstance(svc, "live", "127.0.0.1", live, protocol), ttl=60)
    await registry.register(ServiceInstance(svc, "dead", "127.0.0.1", free_port(), protocol))
    return registry


def dead_is_ejected(resolver: Resolver, svc: str) -> bool:
    (dead,) = [e for e in resolver.endpoints(svc) if e.instance.instance_id == "dead"]
    return dead.outlier.ejected


async def test_http_client_service_targets_go_through_the_resolver(http_port: int) -> None:
    """AsyncClient: service://name picks from the resolver; a dead instance is ejected."""
    from interlink.http import AsyncClient, ServicePolicies

    svc = unique()
    registry = await registry_of(svc, http_port, "http")
    policies = ServicePolicies(retries=2, backoff=0.001, max_backoff=0.002)
    async with (
        Resolver(registry, outlier=OUTLIER) as resolver,
        AsyncClient(policies=policies, resolver=resolver) as client,
    ):
        answers = [await client.get(f"service://{svc}/ok") for _ in range(20)]
        assert {(a.status, a.text) for a in answers} == {(200, "ok")}
        assert resolver.services() == [svc]  # resolved on first use (apick)
        assert dead_is_ejected(resolver, svc)
        assert resolver.stats().ejections == 1
        assert all(e.outstanding == 0 for e in resolver.endpoints(svc))  # every pick done()
    await registry.aclose()


async def test_grpc_channel_service_targets_go_through_the_resolver(grpc_port: int) -> None:
    """resolved_channel: service://name picks from the resolver; a dead instance is ejected."""
    from interlink.grpc import resolved_channel, service

    svc = unique()
    registry = await registry_of(svc, grpc_port, "grpc")
    policies = service(svc, backoff=0.001, max_backoff=0.002)
    async with (
        Resolver(registry, outlier=OUTLIER) as resolver,
        resolved_channel(f"service://{svc}", resolver, policies) as channel,
    ):
        call = channel.unary_unary("/test.Echo/Call")
        answers = [await call(b"hi", timeout=2.0) for _ in range(20)]
        assert set(answers) == {b"hi"}
        assert dead_is_ejected(resolver, svc)
        assert resolver.stats().ejections == 1
        assert all(e.outstanding == 0 for e in resolver.endpoints(svc))
    await registry.aclose()


async def test_http_client_waits_for_nothing_once_resolved(http_port: int) -> None:
    """After the first call, a registry outage changes nothing for the client (stale cache)."""
    from interlink.http import AsyncClient

    svc = unique()
    registry = MemoryRegistry()
    await registry.register(ServiceInstance(svc, "live", "127.0.0.1", http_port), ttl=60)
    async with Resolver(registry) as resolver, AsyncClient(resolver=resolver) as client:
        assert (await client.get(f"service://{svc}/ok")).status == 200
        registry.available = False
        answer = await asyncio.wait_for(client.get(f"service://{svc}/ok"), 2.0)
        assert answer.status == 200
    registry.available = True
    await registry.aclose()


def ipv6_port() -> int:
    """A free port on ::1 (the test is skipped where IPv6 loopback is off)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return int(s.getsockname()[1])
    except OSError:
        pytest.skip("no IPv6 loopback")


async def test_http_client_reaches_an_ipv6_instance() -> None:
    """An instance registered at ::1 is called at http://[::1]:port."""
    from interlink.http import AsyncClient, ServicePolicies

    port = ipv6_port()
    runner = await serve_ok("::1", port)
    svc, registry = unique(), MemoryRegistry()
    await registry.register(ServiceInstance(svc, "v6", "::1", port), ttl=60)
    try:
        async with (
            Resolver(registry) as resolver,
            AsyncClient(policies=ServicePolicies(retries=0), resolver=resolver) as client,
        ):
            assert (await client.get(f"service://{svc}/ok")).text == "ok"
    finally:
        await registry.aclose()
        await runner.cleanup()


async def test_grpc_channel_reaches_an_ipv6_instance() -> None:
    """An instance registered at ::1 is dialled at [::1]:port."""
    from interlink.grpc import resolved_channel, service

    server, port = await serve_echo(f"[::1]:{ipv6_port()}")
    svc, registry = unique(), MemoryRegistry()
    await registry.register(ServiceInstance(svc, "v6", "::1", port, "grpc"), ttl=60)
    try:
        async with (
            Resolver(registry) as resolver,
            resolved_channel(f"service://{svc}", resolver, service(svc, retries=0)) as channel,
        ):
            assert await channel.unary_unary("/test.Echo/Call")(b"hi", timeout=2.0) == b"hi"
    finally:
        await registry.aclose()
        await server.stop(0)


async def test_hedged_calls_do_not_eject_a_slow_healthy_instance() -> None:
    """An attempt cancelled because a hedge answered first is not a failure of its instance."""
    from aiohttp import web

    from interlink.http import AsyncClient, ServicePolicies

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.2)
        return web.Response(text="slow")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    runners, svc, registry = [], unique(), MemoryRegistry()
    for iid, handler in (("slow", slow), ("fast", fast)):
        app = web.Application()
        app.router.add_get("/ok", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        await registry.register(ServiceInstance(svc, iid, "127.0.0.1", port), ttl=60)
    policies = ServicePolicies(hedge_delay=0.01, retries=0)
    try:
        async with (
            Resolver(registry, balancer="round_robin", outlier=OUTLIER) as resolver,
            AsyncClient(policies=policies, resolver=resolver) as client,
        ):
            answers = {(await client.get(f"service://{svc}/ok")).text for _ in range(8)}
            assert answers == {"fast"}
            assert resolver.stats().ejections == 0
    finally:
        await registry.aclose()
        for runner in runners:
            await runner.cleanup()


async def test_http_429_answers_do_not_eject_the_instance() -> None:
    """An instance shedding load (429) answered: retries see it, passive ejection does not."""
    from aiohttp import web

    from interlink.http import AsyncClient, ServicePolicies

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429, text="busy")

    app = web.Application()
    app.router.add_get("/ok", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    svc, registry = unique(), MemoryRegistry()
    await registry.register(ServiceInstance(svc, "busy", "127.0.0.1", port), ttl=60)
    await registry.register(ServiceInstance(svc, "other", "127.0.0.1", port), ttl=60)
    try:
        async with (
            Resolver(registry, outlier=OUTLIER) as resolver,
            AsyncClient(policies=ServicePolicies(retries=0), resolver=resolver) as client,
        ):
            for _ in range(6):
                assert (await client.get(f"service://{svc}/ok")).status == 429
            assert resolver.stats().ejections == 0
    finally:
        await registry.aclose()
        await runner.cleanup()
