"""After a long registry outage the watch resumes within about a second of the registry's
return, whatever its backoff had grown to: a cheap probe (a PING) runs while it is down."""

from __future__ import annotations

import asyncio

import pytest
from _discovery_support import Private, unique
from support import until

from interlink.discovery import Registry, Resolver, ServiceInstance

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_watch_resumes_within_a_second_after_a_long_outage(private_redis: Private) -> None:
    """The backoff has reached 5 s when redis comes back; a new instance is seen within ~1 s."""
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    svc = unique("outage")
    server_side = Registry.from_url(url)
    await server_side.register(ServiceInstance(svc, "old", "127.0.0.1", 9001), ttl=30)
    async with Resolver.from_url(url, retry_delay=0.02, max_retry_delay=5.0) as resolver:
        await resolver.prefetch(svc)
        private_redis.stop()
        # 0.02 s doubling: after 9 failed watches the next wait is the full 5 s
        await until(lambda: resolver.stats().errors >= 9, within=20.0)
        private_redis.start()
        fresh = Registry.from_url(url)
        try:
            await fresh.register(ServiceInstance(svc, "new", "127.0.0.1", 9002), ttl=30)
            took = await until(
                lambda: "new" in {i.instance_id for i in resolver.instances(svc)}, within=4.0
            )
            assert took < 1.5  # the target is 1 s; the margin is for a busy machine
            assert resolver.stats().stale == frozenset()
        finally:
            await fresh.aclose()
    await asyncio.shield(server_side.aclose())
