"""Registry restarts: clients keep serving the last list, servers re-register by themselves.

Each test kills its own private server (never the shared one) with SIGKILL and starts it again
on the same port: Redis without persistence (it comes back empty), NATS with its storage, etcd
with its data directory deleted (every lease is gone, so renewals must grant new ones).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from _discovery_support import Private, unique
from support import until

from interlink.discovery import Registry, Resolver, ServiceInstance

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # servers killed and restarted


async def restart_scenario(
    url: str, server: Private, between: Callable[[], object] = lambda: None
) -> None:
    svc = unique()
    instance = ServiceInstance(svc, "a", "127.0.0.1", 9001)
    server_side = Registry.from_url(url)
    lease = await server_side.register(instance, ttl=1.0)
    resolver = Resolver(
        Registry.from_url(url), retry_delay=0.05, max_retry_delay=0.2, owns_registry=True
    )
    await resolver.prefetch(svc)
    sizes: list[int] = []

    async def sample() -> None:
        while True:
            sizes.append(len(resolver.instances(svc)))
            await asyncio.sleep(0.005)

    sampler = asyncio.get_running_loop().create_task(sample())
    try:
        server.stop()
        await until(lambda: svc in resolver.stats().stale)
        assert resolver.pick(svc).instance == instance  # stale-while-error
        await until(lambda: lease.failures >= 2)  # heartbeats fail while it is down
        between()
        server.start()
        await until(lambda: svc not in resolver.stats().stale, within=5.0)
        renewed = lease.renewals
        await until(lambda: lease.renewals > renewed, within=3.0)
        fresh = Registry.from_url(url)
        found = await fresh.lookup(svc)
        await fresh.aclose()
        assert found == [instance]  # re-registered by the lease after the restart
        assert resolver.pick(svc).instance == instance
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await resolver.aclose()
        await server_side.aclose()
    assert min(sizes) == 1  # the cache never went empty
    assert resolver.stats().errors >= 1


async def test_redis_restart(private_redis: Private) -> None:
    """Redis killed and restarted empty: cache kept throughout, instance re-registered."""
    await restart_scenario(f"redis://127.0.0.1:{private_redis.port}/0", private_redis)


async def test_nats_restart(private_nats: Private) -> None:
    """NATS killed and restarted: cache kept throughout, heartbeats resume."""
    await restart_scenario(f"nats://127.0.0.1:{private_nats.port}", private_nats)


async def test_etcd_restart_without_its_data(private_etcd: Private, tmp_path: Path) -> None:
    """etcd killed and restarted empty: cache kept throughout, the lease re-granted."""
    await restart_scenario(
        f"etcd://127.0.0.1:{private_etcd.port}",
        private_etcd,
        between=lambda: shutil.rmtree(tmp_path / "etcd"),
    )
