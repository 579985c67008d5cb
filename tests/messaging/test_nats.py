"""The backend contract against the NATS JetStream server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.messaging.contract import BackendContract

URL = "nats://127.0.0.1:4222"
PREFIX = "interlink:t-"  # the streams the contract's topics ("t-<hex>") live in


async def _streams() -> set[str]:
    import nats

    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        names: set[str] = set()
        for info in await js.streams_info():
            names.add(info.config.name)
        return {n for n in names if n.startswith(PREFIX)}
    finally:
        await nc.close()


async def _delete(names: set[str]) -> None:
    import nats

    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        for name in names:
            await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(autouse=True)
def _drop_test_streams() -> Iterator[None]:
    """Delete the streams a test created, so the shared server does not fill up."""
    before = asyncio.run(_streams())
    yield
    asyncio.run(_delete(asyncio.run(_streams()) - before))


class TestNatsBackend(BackendContract):
    """Every contract test on JetStream (file storage, the shared server)."""

    def make_backend_url(self) -> str:
        return URL
