"""``nats://host:4222``: instances in a JetStream key-value bucket, watched.

Each instance is one key, ``<service>.<id>`` (both base64url-encoded, since ids may hold
characters NATS keys do not allow) in the bucket ``interlink_discovery``; the value carries the
instance and its expiry time. JetStream 2.9 has no per-key TTL (the bucket's ``max_age`` only
garbage-collects keys an hour after their last renewal), so expiry is decided by the reader
against the wall clock: the registry's machines need NTP-synchronised clocks, as with any
TTL'd registry read by several machines. Watchers wake on every put and delete and at the next
expiry. While the client is disconnected, lookups and watches raise, so the resolver keeps its
last snapshot instead of letting entries expire for want of heartbeats. A server that cannot be
reached at all on first use is an error within about ``2 x connect_timeout``, not a hang.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from interlink.clock import Clock
from interlink.discovery.backends._shared import check_hosts, instance_of, skip_record
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import BaseRegistry, Snapshot, snapshot_of, snapshots

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.js.api import KeyValueConfig, StorageType
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the nats:// registry needs nats-py: pip install 'interlink[nats]'") from exc

__all__ = ["NatsRegistry"]

log = logging.getLogger("interlink.discovery")

_DELETED = frozenset({"DEL", "PURGE"})


def _enc(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class NatsRegistry(BaseRegistry):
    """Instances in the JetStream KV bucket ``bucket`` of the server(s) at ``url``."""

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        bucket: str = "interlink_discovery",
        max_age: float = 3600.0,
        connect_timeout: float = 1.0,
        interval: float = 1.0,
        clock: Clock = time.time,
    ) -> None:
        super().__init__()
        self.url = url
        self.bucket = bucket
        self.max_age = max_age
        self.interval = interval
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NatsRegistry:
        """``nats://host:port`` (comma-separated hosts allowed by nats-py); options as the class.

        Raises ``InvalidURLError`` for a port that is not an integer in [1, 65535].
        """
        check_hosts(url, urlsplit(url).netloc)
        return cls(url, **options)

    async def _bucket(self) -> Any:
        if self._kv is not None:
            if not self._nc.is_connected:
                raise ConnectionError(f"not connected to NATS at {self.url}")
            return self._kv
        async with self._lock:
            if self._kv is None:
                if self._nc is None:
                    # nats-py retries a failed *first* connect forever when reconnects are
                    # unlimited, which would hang a lookup on a registry that is down. Connect
                    # with one retry (an error the resolver can act on), then reconnect forever.
                    nc = await nats.connect(
                        self.url,
                        connect_timeout=self._connect_timeout,
                        allow_reconnect=True,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.2,
                        error_cb=_quiet,
                        disconnected_cb=_noop,
                        reconnected_cb=_noop,
                    )
                    nc.options["max_reconnect_attempts"] = -1  # read on every reconnect
                    self._nc = nc
                js = self._js = self._nc.jetstream(timeout=2.0)
                try:
                    self._kv = await js.key_value(self.bucket)
                except nats.js.errors.BucketNotFoundError:
                    self._kv = await js.create_key_value(
                        KeyValueConfig(
                            bucket=self.bucket,
                            history=1,
                            ttl=self.max_age,
                            storage=StorageType.FILE,
                        )
                    )
        return self._kv

    def _key(self, service: str, instance_id: str) -> str:
        return f"{_enc(service)}.{_enc(instance_id)}"

    def _decode(self, service: str, key: str, value: bytes) -> tuple[ServiceInstance, float] | None:
        name = f"{self.bucket}/{key}"
        try:
            data = json.loads(value)
            stored, expires_at = data["instance"], float(data["expires_at"])
            if not math.isfinite(expires_at):
                raise ValueError(f"'expires_at' must be a finite number: {expires_at!r}")
        except Exception as exc:
            skip_record(service, name, f"{type(exc).__name__}: {exc}")
            return None
        instance = instance_of(service, name, stored)
        return None if instance is None else (instance, expires_at)

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(self._key(service, instance_id))
        except nats.js.errors.KeyNotFoundError:
            return None
        found = self._decode(service, entry.key, entry.value or b"")
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        kv = await self._bucket()
        value = json.dumps(
            {"instance": instance.to_dict(), "ttl": ttl, "expires_at": self._clock() + ttl},
            separators=(",", ":"),
        )
        await kv.put(self._key(instance.service, instance.instance_id), value.encode())
        return None

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        kv = await self._bucket()
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await kv.delete(self._key(instance.service, instance.instance_id))

    def _live(
        self, entries: dict[str, tuple[ServiceInstance, float]]
    ) -> tuple[Snapshot, float | None]:
        now = self._clock()
        live = [(inst, exp) for inst, exp in entries.values() if exp > now]
        expires = min((exp for _, exp in live), default=None)
        return snapshot_of(i for i, _ in live), (None if expires is None else expires - now)

    def _apply(
        self, service: str, entries: dict[str, tuple[ServiceInstance, float]], entry: Any
    ) -> None:
        deleted = entry.operation in _DELETED or not entry.value
        found = None if deleted else self._decode(service, entry.key, entry.value)
        if found is None:  # deleted, or overwritten by something unreadable
            entries.pop(entry.key, None)
        else:
            entries[entry.key] = found

    async def _initial(self, service: str) -> tuple[Any, dict[str, tuple[ServiceInstance, float]]]:
        """A watcher of ``service``'s keys and their current values, read to the last one."""
        kv = await self._bucket()
        watcher = await kv.watch(f"{_enc(service)}.*")
        entries: dict[str, tuple[ServiceInstance, float]] = {}
        try:
            entry = await watcher.updates(timeout=2.0)
            if entry is None and await self._listed(service):
                # nats-py's "no keys" marker can come first although there are keys: when the
                # server has pushed them before nats-py asks how many are pending (a race seen
                # under load). The stream says there are keys, so wait for them.
                with contextlib.suppress(nats.errors.TimeoutError):
                    entry = await watcher.updates(timeout=2.0)
            while entry is not None:
                self._apply(service, entries, entry)
                if entry.delta == 0:
                    break  # the last initial value (a "done" marker may follow; wait skips it)
                entry = await watcher.updates(timeout=2.0)
        except BaseException:
            await _stop(watcher)
            raise
        return watcher, entries

    async def _listed(self, service: str) -> bool:
        """Whether the bucket's stream holds any key of ``service`` (values or deletions)."""
        await self._bucket()
        subjects = f"$KV.{self.bucket}.{_enc(service)}.*"
        info = await self._js.stream_info(f"KV_{self.bucket}", subjects_filter=subjects)
        return bool(info.state.subjects)

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The unexpired instances of ``service`` (one short-lived watcher reads them all)."""
        check_service(service)
        watcher, entries = await self._initial(service)
        await _stop(watcher)
        return list(self._live(entries)[0])

    async def services(self) -> list[str]:
        """The services with a key in the bucket (expired ones included until purged)."""
        kv = await self._bucket()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        names = set()
        for key in keys:
            head = key.partition(".")[0]
            names.add(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode())
        return sorted(names)

    async def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """Snapshots on every put or delete and at each expiry; raises when disconnected."""
        check_service(service)
        watcher, entries = await self._initial(service)
        try:

            async def fetch() -> tuple[Snapshot, float | None]:
                if not self._nc.is_connected:
                    raise ConnectionError(f"not connected to NATS at {self.url}")
                return self._live(entries)

            async def wait(seconds: float) -> None:
                try:
                    entry = await watcher.updates(timeout=max(seconds, 0.001))
                except nats.errors.TimeoutError:
                    return
                if entry is not None:
                    self._apply(service, entries, entry)

            async for snap in snapshots(fetch, wait, interval=self.interval):
                yield snap
        finally:
            await asyncio.shield(_stop(watcher))

    async def probe(self) -> bool:
        """Whether the client is connected (nats-py reconnects by itself every 0.2 s); before
        the first connection, True: the next watch is itself the connection attempt."""
        return self._nc is None or bool(self._nc.is_connected)

    async def aclose(self) -> None:
        """Deregister this object's instances and close the connection."""
        await self._close_leases()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
            self._js = None
            self._kv = None


async def _stop(watcher: Any) -> None:
    with contextlib.suppress(Exception):
        await watcher.stop()


async def _quiet(exc: Exception) -> None:
    log.debug("discovery: nats client error: %s", exc)


async def _noop() -> None:
    return None
