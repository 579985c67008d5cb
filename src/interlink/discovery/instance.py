"""One running copy of a service, as the registry stores it and the resolver hands it out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["ServiceInstance", "check_service"]

# Service names end up in keys (Redis, etcd, NATS subjects) and DNS names, so they are kept to
# the characters all of those accept without escaping.
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def check_service(service: object) -> str:
    """``service`` must be a non-empty name of letters, digits, ``.``, ``_`` and ``-``."""
    if not isinstance(service, str) or not _SERVICE.fullmatch(service):
        raise ValueError(
            "'service' must be a non-empty name of letters, digits, '.', '_' and '-' "
            f"starting with a letter or digit: {service!r}"
        )
    return service


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """``host:port`` of one instance of ``service``, known under ``instance_id``.

    ``protocol`` tells clients and health checks how to talk to it (``"http"``, ``"https"``,
    ``"grpc"``); ``zone`` enables zone-preferring balancing; ``metadata`` carries anything else
    (version, weight, canary flags) as strings. Immutable and validated on construction, so a
    bad registration fails where it is written, not in some client later.
    """

    service: str
    instance_id: str
    host: str
    port: int
    protocol: str = "http"
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    zone: str | None = None

    def __post_init__(self) -> None:
        check_service(self.service)
        if not isinstance(self.instance_id, str) or not self.instance_id.strip():
            raise ValueError(f"'instance_id' must be a non-empty string: {self.instance_id!r}")
        if not isinstance(self.host, str) or not self.host.strip() or " " in self.host:
            raise ValueError(f"'host' must be a non-empty host name or address: {self.host!r}")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"'port' must be an integer in [1, 65535]: {port!r}")
        if not isinstance(self.protocol, str) or not self.protocol:
            raise ValueError(f"'protocol' must be a non-empty string: {self.protocol!r}")
        if self.zone is not None and (not isinstance(self.zone, str) or not self.zone):
            raise ValueError(f"'zone' must be None or a non-empty string: {self.zone!r}")
        if not isinstance(self.metadata, Mapping):
            raise ValueError(f"'metadata' must be a mapping of strings: {self.metadata!r}")
        # A private copy behind a read-only view: the caller's dict can change later, ours not.
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 hosts in brackets), what a socket connects to."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``protocol://host:port``: the base URL of an HTTP instance."""
        return f"{self.protocol}://{self.address}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the form every backend stores."""
        return {
            "service": self.service,
            "instance_id": self.instance_id,
            "host": self.host,
            "port": self.port,
            "protocol": self.protocol,
            "metadata": dict(self.metadata),
            "zone": self.zone,
        }

    def to_json(self) -> str:
        """The stored form, as compact JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceInstance:
        """The inverse of ``to_dict``; unknown keys are ignored (newer writers, older readers)."""
        return cls(
            service=data["service"],
            instance_id=data["instance_id"],
            host=data["host"],
            port=int(data["port"]),
            protocol=data.get("protocol", "http"),
            metadata=data.get("metadata") or {},
            zone=data.get("zone"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ServiceInstance:
        """The inverse of ``to_json``."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a stored instance must be a JSON object: {text!r}")
        return cls.from_dict(data)

    def same_address(self, other: ServiceInstance) -> bool:
        """Whether ``other`` points at the same place (what re-registering an id may not change)."""
        return (self.host, self.port, self.protocol) == (other.host, other.port, other.protocol)
