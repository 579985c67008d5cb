"""The backend contract against the Redis server on 127.0.0.1:6379 (Streams, consumer groups)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.messaging.contract import BackendContract

URL = "redis://127.0.0.1:6379/0"
PATTERN = "interlink:t-*"  # the keys the contract's topics ("t-<hex>") live in


async def _keys() -> set[bytes]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        return {key async for key in client.scan_iter(match=PATTERN, count=1000)}
    finally:
        await client.aclose()


async def _delete(keys: set[bytes]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _drop_test_keys() -> Iterator[None]:
    """Delete the keys a test created, so the shared server does not fill up."""
    before = asyncio.run(_keys())
    yield
    asyncio.run(_delete(asyncio.run(_keys()) - before))


class TestRedisBackend(BackendContract):
    """Every contract test on Redis Streams (the shared server)."""

    def make_backend_url(self) -> str:
        return URL
