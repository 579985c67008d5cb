"""Where a route sends its requests: fixed URLs, or a service found through discovery.

``FixedUpstream`` rotates over a list of ``http://host:port`` addresses; ``ServiceUpstream``
asks an ``interlink.discovery.Resolver`` (power of two choices, passive outlier ejection) and
reports each attempt's outcome back to it, so an instance that keeps failing is ejected.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from interlink.errors import NoInstancesError
from interlink.proxy.errors import ProxyError

__all__ = ["FixedUpstream", "ServiceUpstream", "Target", "Upstream", "parse_upstream_url"]


class Target(Protocol):
    """One chosen instance; ``done(ok)`` reports how the attempt went."""

    host: str
    port: int
    #: ``host:port``
    address: str

    def done(self, ok: bool) -> None:
        """Report the attempt's outcome."""


class Upstream(Protocol):
    """Chooses an instance for each attempt."""

    name: str

    async def choose(self) -> Target:
        """An instance, or ``ProxyError('no_healthy_instance')``."""
        ...


def parse_upstream_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host[:port]`` upstream URL."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"an upstream URL must look like http://host:port: {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"an upstream URL names no path (use 'rewrite'): {url!r}")
    return parts.hostname, parts.port or 80


class _Fixed:
    __slots__ = ("address", "host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"

    def done(self, ok: bool) -> None:
        pass


class FixedUpstream:
    """Round robin over fixed addresses."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("an upstream needs at least one URL")
        self.name = ",".join(urls)
        self._targets = [_Fixed(*parse_upstream_url(u)) for u in urls]
        self._next = itertools.cycle(self._targets).__next__

    async def choose(self) -> Target:
        """The next address in turn."""
        return self._next()

    def choose_now(self) -> Target:
        """``choose`` without awaiting: fixed addresses never wait."""
        return self._next()


class _Resolved:
    __slots__ = ("_picked", "address", "host", "port")

    def __init__(self, picked: Any) -> None:
        self._picked = picked
        self.host: str = picked.instance.host
        self.port: int = picked.instance.port
        self.address = f"{self.host}:{self.port}"

    def done(self, ok: bool) -> None:
        self._picked.done(ok)


class ServiceUpstream:
    """The instances of service ``name``, from a discovery ``Resolver``."""

    def __init__(self, name: str, resolver: Any) -> None:
        self.name = name
        self._resolver = resolver

    async def choose(self) -> Target:
        """An instance chosen by the resolver."""
        try:
            picked = await self._resolver.apick(self.name)
        except NoInstancesError:
            raise ProxyError(
                "no_healthy_instance", f"no healthy instance of {self.name!r} is available"
            ) from None
        return _Resolved(picked)
