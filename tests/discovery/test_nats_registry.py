"""nats:// details the shared contract cannot provoke on demand."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from _discovery_support import NATS_URL, unique

from interlink.discovery import ServiceInstance
from interlink.discovery.backends.nats import NatsRegistry

pytestmark = pytest.mark.anyio


@dataclass
class Entry:
    """The fields of a nats-py KV entry the registry reads."""

    key: str
    value: bytes
    delta: int
    operation: str | None = None


class Watcher:
    """Hands out queued updates like nats-py's KeyWatcher."""

    def __init__(self, updates: list[Entry | None]) -> None:
        self.queue = list(updates)

    async def updates(self, timeout: float) -> Entry | None:  # noqa: ASYNC109 - nats-py's
        return self.queue.pop(0)

    async def stop(self) -> None:
        return None


def entry(n: int, delta: int) -> Entry:
    instance = ServiceInstance("orders", f"i{n}", "127.0.0.1", 9000 + n)
    value = {"instance": instance.to_dict(), "expires_at": 4e9}
    return Entry(f"k{n}", json.dumps(value).encode(), delta)


async def test_a_premature_no_keys_marker_does_not_hide_the_keys() -> None:
    """nats-py may signal "no keys" before keys the server already pushed (a race under load):
    when the stream lists keys, lookup waits for them."""
    registry = NatsRegistry()
    watcher = Watcher([None, entry(1, delta=1), entry(2, delta=0)])

    class KV:
        async def watch(self, keys: str) -> Watcher:
            return watcher

    async def bucket() -> Any:
        return KV()

    async def listed(service: str) -> bool:
        return True

    registry._bucket = bucket  # type: ignore[method-assign]
    registry._listed = listed  # type: ignore[method-assign]
    found = await registry.lookup("orders")
    assert sorted(i.instance_id for i in found) == ["i1", "i2"]
    assert watcher.queue == []


async def test_the_stream_check_sees_registered_keys() -> None:
    """The check behind that wait asks the real server about the right subjects."""
    registry = NatsRegistry(NATS_URL)
    svc = unique()
    try:
        assert not await registry._listed(svc)
        await registry.register(ServiceInstance(svc, "a", "127.0.0.1", 9000), ttl=30)
        assert await registry._listed(svc)
    finally:
        await registry.aclose()
