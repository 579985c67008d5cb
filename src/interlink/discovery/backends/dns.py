"""``dns://[server[:port]]/?domain=...&port=...``: instances from DNS A and SRV records.

What Kubernetes gives a headless service: one A record per ready pod under
``<service>.<namespace>.svc.cluster.local``, and SRV records for its named ports. Read only:
registration is the platform's job (register/deregister raise ``NotImplementedError``).

``lookup("orders")`` asks for ``orders.<domain>`` (or ``orders`` itself when no ``domain`` is
set or the name ends with a dot). ``mode``: ``srv`` (SRV records; targets resolved from the
additional section or with an A query), ``a`` (A records, all on ``port``), or ``auto`` (the
default: SRV, then A when there is no SRV answer). A name that does not exist is an empty list;
a server that does not answer is an error, which the resolver rides out with its last list.
``watch`` re-asks every ``interval`` seconds (default 1).

The client is a small stdlib UDP one (TCP when the answer is truncated); dnslib encodes and
decodes the messages. The server defaults to the first ``nameserver`` in ``/etc/resolv.conf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from interlink.discovery.backends._shared import check_hosts, query_of, query_seconds, split_url
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import DEFAULT_TTL, Lease, Snapshot, polled

try:
    from dnslib import QTYPE, RCODE, DNSRecord  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the dns:// registry needs dnslib: pip install 'interlink[dns]'") from exc

__all__ = ["DnsRegistry"]

_MODES = ("auto", "srv", "a")


def _system_nameserver() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    return "127.0.0.1"


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, waiter: asyncio.Future[bytes]) -> None:
        self.waiter = waiter

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.waiter.done():
            self.waiter.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(exc)


class DnsRegistry:
    """A read-only registry answering from a DNS server."""

    def __init__(
        self,
        server: str | None = None,
        port: int = 53,
        *,
        domain: str = "",
        service_port: int | None = None,
        mode: str = "auto",
        protocol: str = "http",
        interval: float = 1.0,
        timeout: float = 1.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"'mode' must be one of {', '.join(map(repr, _MODES))}: {mode!r}")
        if mode == "a" and service_port is None:
            raise ValueError("'port' must be given for mode 'a' (A records carry no port): None")
        self.server = server or _system_nameserver()
        self.port = port
        self.domain = domain.strip(".")
        self.service_port = service_port
        self.mode = mode
        self.protocol = protocol
        self.interval = interval
        self.timeout = timeout

    @classmethod
    def from_url(cls, url: str, **options: Any) -> DnsRegistry:
        """``dns://[server[:port]]/?domain=default.svc.cluster.local&port=8080&mode=auto``.

        Also ``interval``, ``timeout`` (seconds > 0) and ``protocol`` (what the instances
        speak, default http).
        """
        parts, query = split_url(url)
        check_hosts(url, parts.netloc)
        if parts.hostname:
            options.setdefault("server", parts.hostname)
        if parts.port:
            options.setdefault("port", parts.port)
        port = query_of(url, query, "port", int)
        if port is not None:
            options.setdefault("service_port", port)
        for name in ("domain", "mode", "protocol"):
            if name in query:
                options.setdefault(name, query[name])
        query_seconds(url, query, options, "interval", "timeout")
        return cls(**options)

    async def register(self, instance: ServiceInstance, ttl: float = DEFAULT_TTL) -> Lease:
        """Not possible: DNS records are published by the platform (Kubernetes, your zone)."""
        raise NotImplementedError("the dns:// registry is read only: publish records in DNS")

    async def deregister(self, instance: ServiceInstance) -> None:
        """Not possible: see ``register``."""
        raise NotImplementedError("the dns:// registry is read only: publish records in DNS")

    def _name(self, service: str) -> str:
        if service.endswith(".") or not self.domain:
            return service.rstrip(".")
        return f"{service}.{self.domain}"

    async def _ask(self, name: str, qtype: str) -> DNSRecord:
        query = DNSRecord.question(name, qtype)
        query.header.id = random.randrange(1 << 16)
        packet = query.pack()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bytes] = loop.create_future()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagram(waiter), remote_addr=(self.server, self.port)
            )
        except OSError as exc:
            raise ConnectionError(f"DNS server {self.server}:{self.port}: {exc}") from exc
        try:
            transport.sendto(packet)
            data = await asyncio.wait_for(waiter, self.timeout)
        except (TimeoutError, OSError) as exc:
            raise ConnectionError(
                f"DNS server {self.server}:{self.port} did not answer {qtype} {name}"
            ) from exc
        finally:
            transport.close()
        reply = DNSRecord.parse(data)
        if reply.header.tc:
            reply = await self._ask_tcp(packet)
        if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            raise ConnectionError(
                f"DNS server {self.server}:{self.port} answered {RCODE[reply.header.rcode]} "
                f"for {qtype} {name}"
            )
        return reply

    async def _ask_tcp(self, packet: bytes) -> DNSRecord:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.server, self.port), self.timeout
            )
            try:
                writer.write(struct.pack("!H", len(packet)) + packet)
                size = struct.unpack(
                    "!H", await asyncio.wait_for(reader.readexactly(2), self.timeout)
                )
                data = await asyncio.wait_for(reader.readexactly(size[0]), self.timeout)
            finally:
                writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            raise ConnectionError(f"DNS server {self.server}:{self.port} over TCP: {exc}") from exc
        return DNSRecord.parse(data)

    def _instance(self, service: str, host: str, port: int, **metadata: str) -> ServiceInstance:
        return ServiceInstance(
            service=service,
            instance_id=f"{host}:{port}",
            host=host,
            port=port,
            protocol=self.protocol,
            metadata=metadata,
        )

    async def _srv(self, service: str, name: str) -> list[ServiceInstance]:
        reply = await self._ask(name, "SRV")
        extra: dict[str, list[str]] = {}
        for rr in reply.ar:
            if rr.rtype == QTYPE.A:
                extra.setdefault(str(rr.rname).rstrip("."), []).append(str(rr.rdata))
        found = []
        for rr in reply.rr:
            if rr.rtype != QTYPE.SRV:
                continue
            target = str(rr.rdata.target).rstrip(".")
            hosts = extra.get(target)
            if hosts is None:
                hosts = [
                    str(a.rdata) for a in (await self._ask(target, "A")).rr if a.rtype == QTYPE.A
                ]
            meta = {
                "priority": str(rr.rdata.priority),
                "weight": str(rr.rdata.weight),
                "target": target,
            }
            found += [self._instance(service, h, int(rr.rdata.port), **meta) for h in hosts]
        return found

    async def _a(self, service: str, name: str) -> list[ServiceInstance]:
        assert self.service_port is not None
        reply = await self._ask(name, "A")
        return [
            self._instance(service, str(rr.rdata), self.service_port)
            for rr in reply.rr
            if rr.rtype == QTYPE.A
        ]

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The instances DNS lists for ``service`` right now."""
        check_service(service)
        name = self._name(service)
        if self.mode == "a":
            return await self._a(service, name)
        found = await self._srv(service, name)
        if found or self.mode == "srv" or self.service_port is None:
            return found
        return await self._a(service, name)

    def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """A snapshot now and whenever the answer changes, asked every ``interval``."""
        return polled(self.lookup, service, self.interval)

    async def aclose(self) -> None:
        """Nothing to release: every query uses its own socket."""
