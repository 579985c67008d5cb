"""``etcd://host:2379``: etcd v3 leases and watch, spoken over etcd's HTTP/JSON gateway.

Why the gateway and httpx instead of an etcd client library: the Python etcd3 packages are
unmaintained (``etcd3`` last released in 2020 and broken by protobuf 4; its forks are thin),
while the JSON gateway ships inside every etcd server since 3.3 (paths ``/v3/...`` since 3.4),
is what etcd's own docs show with curl, and needs nothing beyond httpx, which interlink's HTTP
extra already brings. Four calls cover discovery: ``lease/grant`` + ``kv/put`` with the lease to
register, ``lease/keepalive`` to renew, ``kv/range`` to look up, and the streaming ``/v3/watch``
to follow a prefix.

An instance is the key ``/interlink/discovery/<service>/<id>`` attached to a lease of
``floor(ttl - 0.5)`` seconds (etcd counts whole seconds and deletes expired leases in a sweep
every 500 ms, so the key is gone within ``ttl`` of the last renewal; the floor is 1 s, and etcd
itself enforces at least about 1.5 x its election timeout, 1.5 s with the defaults). Expiry is
the server's: when a lease runs out etcd deletes the key and every watcher sees the delete, so
nothing depends on client clocks. A renewal that finds its lease gone (etcd restarted without
its data, or the lease expired during a partition) grants a new one and writes the key again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from interlink.discovery.backends._shared import check_hosts, instance_of, query_seconds, split_url
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import BaseRegistry, Snapshot, snapshot_of, snapshots
from interlink.errors import InvalidURLError

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the etcd:// registry needs httpx: pip install 'interlink[http]'") from exc

__all__ = ["EtcdRegistry"]


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # the prefix ends in "/", so this never overflows
    return _b64(bytes(raw))


class EtcdRegistry(BaseRegistry):
    """Instances as leased keys under ``prefix`` in the etcd cluster at ``endpoint``."""

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:2379",
        *,
        prefix: str = "/interlink/discovery/",
        timeout: float = 2.0,
        interval: float = 5.0,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint.rstrip("/")
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.interval = interval
        self._http = httpx.AsyncClient(
            base_url=self.endpoint, timeout=httpx.Timeout(timeout, connect=timeout)
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdRegistry:
        """``etcd://host:port`` (plain HTTP) or ``etcds://host:port`` (HTTPS); ``?prefix=/x/``,
        ``?timeout=``, ``?interval=`` (seconds > 0)."""
        parts, query = split_url(url)
        scheme = "https" if parts.scheme == "etcds" else "http"
        if not parts.hostname:
            raise InvalidURLError(
                f"'url' must name the etcd host, e.g. etcd://127.0.0.1:2379: {url!r}"
            )
        check_hosts(url, parts.netloc)
        if "prefix" in query:
            options.setdefault("prefix", query["prefix"])
        query_seconds(url, query, options, "timeout", "interval")
        return cls(f"{scheme}://{parts.netloc}", **options)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._http.post(path, json=body)
        if response.status_code >= 400:
            raise ConnectionError(
                f"etcd {path} answered {response.status_code}: {response.text[:200]}"
            )
        data = response.json()
        if not isinstance(data, dict):
            raise ValueError(f"etcd {path} answered a JSON {type(data).__name__}, not an object")
        return data

    def _key(self, service: str, instance_id: str = "") -> str:
        return f"{self.prefix}{service}/{instance_id}"

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        data = await self._post("/v3/kv/range", {"key": _b64(self._key(service, instance_id))})
        kvs = data.get("kvs") or []
        return self._decode(service, kvs[0]) if kvs else None

    def _decode(self, service: str, kv: dict[str, Any]) -> ServiceInstance | None:
        key = kv.get("key")
        name = _unb64(key).decode(errors="replace") if isinstance(key, str) else repr(key)
        value = kv.get("value")
        return instance_of(service, name, _unb64(value) if isinstance(value, str) else value)

    async def _grant_and_put(self, instance: ServiceInstance, ttl: float) -> str:
        # etcd sweeps expired leases every 500 ms: a lease of ttl - 0.5 s, in whole seconds,
        # has the key gone within ``ttl`` of the last renewal.
        grant = await self._post("/v3/lease/grant", {"TTL": max(1, math.floor(ttl - 0.5))})
        lease_id = str(grant["ID"])
        await self._post(
            "/v3/kv/put",
            {
                "key": _b64(self._key(instance.service, instance.instance_id)),
                "value": _b64(instance.to_json()),
                "lease": lease_id,
            },
        )
        return lease_id

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        return await self._grant_and_put(instance, ttl)

    async def _refresh(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        if token is not None:
            answer = await self._post("/v3/lease/keepalive", {"ID": token})
            if int((answer.get("result") or {}).get("TTL") or 0) > 0:
                return token
        return await self._grant_and_put(instance, ttl)  # the lease is gone: start over

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        await self._post(
            "/v3/kv/deleterange", {"key": _b64(self._key(instance.service, instance.instance_id))}
        )
        if token is not None:
            with contextlib.suppress(ConnectionError):
                await self._post("/v3/lease/revoke", {"ID": token})

    async def _range(self, service: str) -> tuple[dict[bytes, ServiceInstance], int]:
        prefix = self._key(service)
        data = await self._post(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)}
        )
        found = {}
        for kv in data.get("kvs") or []:
            instance = self._decode(service, kv)
            if instance is not None:
                found[_unb64(kv["key"])] = instance
        return found, int(data["header"]["revision"])

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """Every key under the service's prefix (leases expire on the server)."""
        check_service(service)
        found, _ = await self._range(service)
        return list(found.values())

    async def services(self) -> list[str]:
        """The services with at least one key under the prefix."""
        data = await self._post(
            "/v3/kv/range",
            {"key": _b64(self.prefix), "range_end": _range_end(self.prefix), "keys_only": True},
        )
        keys = (_unb64(kv["key"]).decode()[len(self.prefix) :] for kv in data.get("kvs") or [])
        return sorted({key.partition("/")[0] for key in keys})

    async def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """Snapshots on every put and delete (lease expiry included) from one watch stream."""
        check_service(service)
        entries, revision = await self._range(service)
        prefix = self._key(service)
        lines: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _range_end(prefix),
                "start_revision": str(revision + 1),
            }
        }

        async def read() -> None:
            try:
                async with self._http.stream(
                    "POST", "/v3/watch", json=request, timeout=httpx.Timeout(None, connect=2.0)
                ) as response:
                    if response.status_code >= 400:
                        raise ConnectionError(f"etcd watch answered {response.status_code}")
                    async for line in response.aiter_lines():
                        if line.strip():
                            lines.put_nowait(json.loads(line))
                raise ConnectionError("etcd closed the watch stream")
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                lines.put_nowait(exc)

        reader = asyncio.get_running_loop().create_task(read(), name=f"etcd-watch-{service}")

        def apply(message: dict[str, Any]) -> None:
            result = message.get("result") or {}
            if message.get("error") or result.get("canceled"):
                raise ConnectionError(f"etcd cancelled the watch: {message}")
            for event in result.get("events") or []:
                kv = event.get("kv") or {}
                key = _unb64(kv.get("key", ""))
                instance = None if event.get("type") == "DELETE" else self._decode(service, kv)
                if instance is None:  # deleted, or overwritten by something unreadable
                    entries.pop(key, None)
                else:
                    entries[key] = instance

        async def fetch() -> tuple[Snapshot, float | None]:
            return snapshot_of(entries.values()), None

        async def wait(seconds: float) -> None:
            try:
                item = await asyncio.wait_for(lines.get(), seconds)
            except TimeoutError:
                return
            # Only the wait may time out quietly: an error of the reader (whatever its type)
            # ends this watch, or the stream would be dead while the cache looks fresh.
            while True:
                if isinstance(item, BaseException):
                    raise item
                apply(item)
                if lines.empty():
                    return
                item = lines.get_nowait()

        try:
            async for snap in snapshots(fetch, wait, interval=self.interval):
                yield snap
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def probe(self) -> bool:
        """Whether etcd answers a status request now."""
        try:
            await self._post("/v3/maintenance/status", {})
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        """Deregister this object's instances (revoking their leases) and close the client."""
        await self._close_leases()
        await self._http.aclose()
