"""``static``: a fixed list of instances, from a file, the URL itself, or a dict.

For local development, tests, and the services whose addresses never change. Read only.

- ``static:///etc/app/services.toml`` (or ``.json``): re-read when the file changes, so
  ``watch`` follows edits (checked every ``interval`` seconds, default 1).
- ``static:?orders=127.0.0.1:8001,127.0.0.1:8002&payments=10.0.0.5:9000``.
- ``StaticRegistry({"orders": ["127.0.0.1:8001", {"host": "10.0.0.7", "port": 8001,
  "zone": "b", "id": "orders-7", "protocol": "grpc", "metadata": {...}}]})``.

A file holds that mapping at the top level or under a ``services`` key. An entry's id defaults
to its ``host:port``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import DEFAULT_TTL, Lease, Snapshot, polled, snapshot_of
from interlink.errors import InvalidURLError

__all__ = ["StaticRegistry", "parse_services"]


def _split_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a static instance must be 'host:port': {text!r}")
    return host.strip("[]"), int(port)


def _entry(service: str, item: Any) -> ServiceInstance:
    host: Any
    port: Any
    if isinstance(item, str):
        host, port = _split_address(item)
        return ServiceInstance(service, f"{host}:{port}", host, port)
    if isinstance(item, Mapping):
        if "address" in item:
            host, port = _split_address(str(item["address"]))
        else:
            host, port = item.get("host"), item.get("port")
        return ServiceInstance(
            service=service,
            instance_id=str(item.get("id") or item.get("instance_id") or f"{host}:{port}"),
            host=host,  # validated by ServiceInstance
            port=port,
            protocol=item.get("protocol", "http"),
            metadata={str(k): str(v) for k, v in (item.get("metadata") or {}).items()},
            zone=item.get("zone"),
        )
    raise ValueError(f"a static instance must be 'host:port' or a table: {item!r}")


def parse_services(data: Mapping[str, Any]) -> dict[str, Snapshot]:
    """``{service: [entry, ...]}`` (optionally under ``services``) as snapshots."""
    if isinstance(data.get("services"), Mapping):
        data = data["services"]
    parsed: dict[str, Snapshot] = {}
    for service, listed in data.items():
        check_service(service)
        items = (
            [listed]
            if isinstance(listed, str | Mapping) or not isinstance(listed, Sequence)
            else listed
        )
        parsed[service] = snapshot_of(_entry(service, item) for item in items)
    return parsed


def _load(path: Path) -> dict[str, Snapshot]:
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a table of services")
    return parse_services(data)


class StaticRegistry:
    """A read-only registry over a fixed mapping or a watched file."""

    def __init__(
        self,
        services: Mapping[str, Any] | None = None,
        *,
        path: str | Path | None = None,
        interval: float = 1.0,
    ) -> None:
        if (services is None) == (path is None):
            raise ValueError("'services' or 'path' must be given, not both and not neither")
        self.path = Path(path) if path is not None else None
        self.interval = interval
        self._mtime: float | None = None
        self._services: dict[str, Snapshot] = {}
        if services is not None:
            self._services = parse_services(services)
        else:
            self._reload()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> StaticRegistry:
        """``static:///path.toml`` / ``static:///path.json`` or ``static:?svc=host:port,...``."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if path and path != "/":
            return cls(path=path, **options)
        query = parse_qs(parts.query)
        if not query:
            raise InvalidURLError(
                f"'url' must name a file or list services, e.g. static:?a=h:1: {url!r}"
            )
        services = {
            name: [a for v in values for a in v.split(",") if a] for name, values in query.items()
        }
        return cls(services, **options)

    def _reload(self) -> None:
        assert self.path is not None
        mtime = self.path.stat().st_mtime_ns
        if mtime != self._mtime:
            self._services = _load(self.path)
            self._mtime = mtime

    async def register(self, instance: ServiceInstance, ttl: float = DEFAULT_TTL) -> Lease:
        """Not possible: edit the file (or the mapping) instead."""
        raise NotImplementedError("the static registry is read only: edit its file instead")

    async def deregister(self, instance: ServiceInstance) -> None:
        """Not possible: see ``register``."""
        raise NotImplementedError("the static registry is read only: edit its file instead")

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The listed instances of ``service`` (the file re-read if it changed)."""
        check_service(service)
        if self.path is not None:
            self._reload()
        return list(self._services.get(service, ()))

    async def services(self) -> list[str]:
        """Every listed service."""
        if self.path is not None:
            self._reload()
        return sorted(self._services)

    def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """A snapshot now and after each change of the file."""
        return polled(self.lookup, service, self.interval)

    async def aclose(self) -> None:
        """Nothing to release."""
