"""A retry never goes back to the instance that failed it while another is in rotation
(Envoy's "previous hosts" retry predicate), in both HTTP clients and the gRPC channel.

The balancer here always prefers the dead instance, so without the predicate every attempt
of a call would land on it; with it, the first retry goes to the live one. Then a rolling
restart with SIGKILL under steady traffic, with default policies, loses no call.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from _discovery_support import REDIS_URL, unique
from support import free_port, until
from test_clients import serve_echo, serve_ok

from interlink.discovery import Endpoint, Pool, Resolver, ServiceInstance
from interlink.discovery.backends.memory import MemoryRegistry

pytestmark = pytest.mark.anyio


class DeadFirst:
    """Chooses the endpoint whose id sorts first: 'a-dead' whenever it is in the pool."""

    def choose(self, pool: Pool, /) -> Endpoint:
        return min(pool.endpoints, key=lambda e: e.instance.instance_id)


async def two_instances(svc: str, live: int, protocol: str) -> MemoryRegistry:
    registry = MemoryRegistry()
    dead = ServiceInstance(svc, "a-dead", "127.0.0.1", free_port(), protocol)
    await registry.register(dead, ttl=60)
    await registry.register(ServiceInstance(svc, "b-live", "127.0.0.1", live, protocol), ttl=60)
    return registry


def test_pick_avoids_the_given_instances_while_another_is_in_rotation() -> None:
    """pick(service, avoid) skips avoided instances, and ignores avoid when nothing else is left."""

    async def main() -> None:
        svc = unique()
        registry = await two_instances(svc, free_port(), "http")
        async with Resolver(registry, balancer=DeadFirst(), outlier=None) as resolver:
            await resolver.prefetch(svc)
            dead, live = sorted(resolver.instances(svc), key=lambda i: i.instance_id)
            assert resolver.pick(svc).instance == dead
            for _ in range(20):
                with resolver.pick(svc, [dead]) as picked:
                    assert picked.instance == live
            with resolver.pick(svc, {dead, live}) as picked:  # nowhere else: the balancer decides
                assert picked.instance == dead
        await registry.aclose()

    asyncio.run(main())


async def test_async_http_retry_goes_to_another_instance() -> None:
    """AsyncClient, default policies: the retry after a refused connection lands on the live
    instance, so the call succeeds at once."""
    from interlink.http import AsyncClient

    port = free_port()
    runner = await serve_ok("127.0.0.1", port)
    svc = unique()
    registry = await two_instances(svc, port, "http")
    try:
        async with (
            Resolver(registry, balancer=DeadFirst(), outlier=None) as resolver,
            AsyncClient(resolver=resolver) as client,
        ):
            for _ in range(5):
                assert (await client.get(f"service://{svc}/ok")).text == "ok"
    finally:
        await runner.cleanup()
        await registry.aclose()


async def test_sync_http_retry_goes_to_another_instance() -> None:
    """Client (httpx), default policies: the same, from a worker thread."""
    from interlink.http import Client

    port = free_port()
    runner = await serve_ok("127.0.0.1", port)
    svc = unique()
    registry = await two_instances(svc, port, "http")
    try:
        async with Resolver(registry, balancer=DeadFirst(), outlier=None) as resolver:
            await resolver.prefetch(svc)

            def calls() -> list[str]:
                with Client(resolver=resolver) as client:
                    return [client.get(f"service://{svc}/ok").text for _ in range(5)]

            assert await asyncio.to_thread(calls) == ["ok"] * 5
    finally:
        await runner.cleanup()
        await registry.aclose()


async def test_grpc_retry_goes_to_another_instance() -> None:
    """resolved_channel, default policies: the retry after UNAVAILABLE lands on the live one."""
    from interlink.grpc import resolved_channel, service

    server, port = await serve_echo(f"127.0.0.1:{free_port()}")
    svc = unique()
    registry = await two_instances(svc, port, "grpc")
    try:
        async with (
            Resolver(registry, balancer=DeadFirst(), outlier=None) as resolver,
            resolved_channel(f"service://{svc}", resolver, service(svc)) as channel,
        ):
            call = channel.unary_unary("/test.Echo/Call")
            for _ in range(5):
                assert await call(b"hi", timeout=5.0) == b"hi"
    finally:
        await server.stop(0)
        await registry.aclose()


# ------------------------------------------------------------- rolling restart with SIGKILL

_SERVER = """
import asyncio, sys
from aiohttp import web
from interlink.discovery import Registry, ServiceInstance

async def main():
    url, service, iid, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    async def ok(request):
        return web.Response(text=iid)
    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    registry = Registry.from_url(url)
    await registry.register(ServiceInstance(service, iid, "127.0.0.1", port), ttl=1.0)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[str]]]:
    """Server processes the test starts; all killed at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
async def test_sigkill_rolling_restart_under_traffic_loses_no_call(
    servers: list[subprocess.Popen[str]],
) -> None:
    """Three instances behind a redis Resolver and an AsyncClient with default policies; each
    in turn is killed with SIGKILL (listed until its 1 s TTL runs out) and replaced, while four
    callers keep calling. No caller sees an error."""
    from interlink.http import AsyncClient

    svc = unique("roll")

    async def start(n: int) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", _SERVER, REDIS_URL, svc, f"i{n}", str(free_port())]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220 - returns at once
        servers.append(proc)
        assert proc.stdout is not None
        assert await asyncio.to_thread(proc.stdout.readline) == "ready\n"
        return proc

    live = [await start(n) for n in range(3)]
    errors: list[BaseException] = []
    calls = 0
    stop = asyncio.Event()
    async with Resolver.from_url(REDIS_URL) as resolver, AsyncClient(resolver=resolver) as client:
        await resolver.prefetch(svc)
        await until(lambda: len(resolver.instances(svc)) == 3, within=5.0)

        async def caller() -> None:
            nonlocal calls
            while not stop.is_set():
                try:
                    await client.get(f"service://{svc}/")
                except Exception as exc:
                    errors.append(exc)
                calls += 1
                await asyncio.sleep(0.01)

        callers = [asyncio.create_task(caller()) for _ in range(4)]
        try:
            for n in range(3, 6):
                victim = live.pop(0)
                os.kill(victim.pid, signal.SIGKILL)
                live.append(await start(n))
                gone = f"i{n - 3}"
                await until(
                    lambda gone=gone: gone not in {i.instance_id for i in resolver.instances(svc)},
                    within=5.0,
                )
        finally:
            stop.set()
            await asyncio.gather(*callers)
    assert calls > 100
    assert errors == [], errors[:3]
