"""The Redis registry's key prefix from the URL: systems sharing one Redis keep apart."""

from __future__ import annotations

import asyncio

import pytest
from _discovery_support import REDIS_URL, unique

from interlink.discovery import Registry, ServiceInstance
from interlink.errors import InvalidURLError


def test_prefix_in_the_url_separates_registries() -> None:
    """Two registries with different ?prefix= do not see each other's instances."""
    asyncio.run(_separate())


async def _separate() -> None:
    service = unique("svc")
    a = Registry.from_url(f"{REDIS_URL}?prefix={unique('a')}:")
    b = Registry.from_url(f"{REDIS_URL}?prefix={unique('b')}:")
    try:
        lease = await a.register(ServiceInstance(service, "i-1", "127.0.0.1", 8080), ttl=5.0)
        assert [i.instance_id for i in await a.lookup(service)] == ["i-1"]
        assert await b.lookup(service) == []
        await lease.aclose()
    finally:
        await a.aclose()
        await b.aclose()


def test_an_empty_prefix_is_refused() -> None:
    """?prefix= with nothing after it is an error naming the URL."""
    with pytest.raises(InvalidURLError, match="'prefix' in the registry URL must not be empty"):
        Registry.from_url(f"{REDIS_URL}?prefix=")
