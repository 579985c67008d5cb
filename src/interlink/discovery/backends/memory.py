"""``memory://[name]``: a registry inside one process, for tests and single-process apps.

Registries built from the same ``memory://name`` URL share their entries for as long as one of
them is alive (a weak table keyed by name), so a test's server and client can find each other
through URLs alone; ``memory://`` without a name is always a fresh, private registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from interlink.clock import Clock
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import BaseRegistry, Snapshot, snapshot_of, snapshots

__all__ = ["MemoryRegistry"]


class _Store:
    """The entries of one named registry: (service, id) -> (instance, expires at)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.entries: dict[str, dict[str, tuple[ServiceInstance, float]]] = {}
        self.changed: dict[str, asyncio.Event] = {}

    def notify(self, service: str) -> None:
        event = self.changed.pop(service, None)
        if event is not None:
            event.set()


# Process-wide by design: the point of a named memory registry is that separate objects in one
# process share it. Weak values: the entries vanish with the last registry using the name.
_NAMED: weakref.WeakValueDictionary[str, _Store] = weakref.WeakValueDictionary()


class MemoryRegistry(BaseRegistry):
    """Instances in a dict, expiring ``ttl`` seconds after their last renewal by ``clock``."""

    def __init__(self, name: str | None = None, *, clock: Clock = time.monotonic) -> None:
        super().__init__()
        store = _NAMED.get(name) if name else None
        if store is None:
            store = _Store(clock)
            if name:
                _NAMED[name] = store
        self._store = store
        self.available = True
        """Set False to simulate an unreachable registry: every call raises ConnectionError."""

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryRegistry:
        """``memory://`` (private) or ``memory://name`` (shared by name within the process)."""
        parts = urlsplit(url)
        return cls(parts.netloc or parts.path.strip("/") or None, **options)

    async def probe(self) -> bool:
        """Whether ``available`` is set."""
        return self.available

    def _check(self) -> None:
        if not self.available:
            raise ConnectionError("memory registry is marked unavailable")

    def _live(self, service: str) -> tuple[Snapshot, float | None]:
        now = self._store.clock()
        entries = self._store.entries.get(service, {})
        live = [(inst, exp) for inst, exp in entries.values() if exp > now]
        expires = min((exp for _, exp in live), default=None)
        return snapshot_of(inst for inst, _ in live), (None if expires is None else expires - now)

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        self._check()
        entry = self._store.entries.get(service, {}).get(instance_id)
        if entry is None or entry[1] <= self._store.clock():
            return None
        return entry[0]

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        self._check()
        entries = self._store.entries.setdefault(instance.service, {})
        old = entries.get(instance.instance_id)
        entries[instance.instance_id] = (instance, self._store.clock() + ttl)
        if old is None or old[0] != instance or old[1] <= self._store.clock():
            self._store.notify(instance.service)
        return None

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        self._check()
        entries = self._store.entries.get(instance.service, {})
        if entries.pop(instance.instance_id, None) is not None:
            self._store.notify(instance.service)

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The instances of ``service`` whose TTL has not run out."""
        check_service(service)
        self._check()
        return list(self._live(service)[0])

    async def services(self) -> list[str]:
        """The services with at least one live instance."""
        self._check()
        return sorted(s for s in self._store.entries if self._live(s)[0])

    async def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """Snapshots on every change and at each expiry."""
        check_service(service)

        async def fetch() -> tuple[Snapshot, float | None]:
            self._check()
            return self._live(service)

        async def wait(seconds: float) -> None:
            event = self._store.changed.setdefault(service, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)

        async for snap in snapshots(fetch, wait, interval=0.5):
            yield snap
