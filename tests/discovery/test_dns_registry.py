"""dns:// against a DNS server the test runs on loopback (dnslib)."""

from __future__ import annotations

import asyncio

import pytest
from _discovery_support import DnsServer, unique
from support import until

from interlink.discovery import Registry, Resolver, ServiceInstance
from interlink.discovery.backends.dns import DnsRegistry

pytestmark = pytest.mark.anyio


def registry(server: DnsServer, query: str = "") -> DnsRegistry:
    reg = Registry.from_url(
        f"dns://127.0.0.1:{server.port}/?domain=ns.svc.test&interval=0.05{query}"
    )
    assert isinstance(reg, DnsRegistry)
    return reg


async def test_srv_records_give_hosts_and_ports(dns_server: DnsServer) -> None:
    """SRV answers become instances with the target's address and the record's port."""
    svc = unique()
    name = f"{svc}.ns.svc.test"
    dns_server.zone.a["pod-1.test"] = ["10.1.0.1"]
    dns_server.zone.srv[name] = [(8080, "pod-1.test"), (8081, "pod-2.test")]
    dns_server.zone.a["pod-2.test"] = ["10.1.0.2"]
    found = sorted(await registry(dns_server).lookup(svc), key=lambda i: i.port)
    assert [(i.host, i.port) for i in found] == [("10.1.0.1", 8080), ("10.1.0.2", 8081)]
    assert found[0].instance_id == "10.1.0.1:8080"
    assert found[0].metadata["target"] == "pod-1.test"


async def test_a_records_use_the_configured_port(dns_server: DnsServer) -> None:
    """Without SRV records, auto mode falls back to A records on ?port=."""
    svc = unique()
    dns_server.zone.a[f"{svc}.ns.svc.test"] = ["10.2.0.1", "10.2.0.2"]
    found = await registry(dns_server, "&port=9000").lookup(svc)
    assert sorted(i.address for i in found) == ["10.2.0.1:9000", "10.2.0.2:9000"]


async def test_unknown_name_is_an_empty_list(dns_server: DnsServer) -> None:
    """NXDOMAIN means no instances, not an error."""
    assert await registry(dns_server, "&port=9000").lookup(unique()) == []


async def test_silent_server_is_a_connection_error() -> None:
    """A DNS server that does not answer raises, so the resolver keeps its last list."""
    reg = DnsRegistry("127.0.0.1", 9, timeout=0.1)  # discard port: nobody answers
    with pytest.raises(ConnectionError, match="did not answer SRV"):
        await reg.lookup("orders")


async def test_watch_follows_record_changes(dns_server: DnsServer) -> None:
    """A resolver over dns:// sees a new pod at the next poll."""
    svc = unique()
    name = f"{svc}.ns.svc.test"
    dns_server.zone.a[name] = ["10.3.0.1"]
    async with Resolver(registry(dns_server, "&mode=a&port=80")) as resolver:
        await resolver.prefetch(svc)
        dns_server.zone.a[name] = ["10.3.0.1", "10.3.0.2"]
        await until(lambda: len(resolver.instances(svc)) == 2)


async def test_dns_registry_is_read_only(dns_server: DnsServer) -> None:
    """Registering through DNS is refused with the reason."""
    with pytest.raises(NotImplementedError, match="read only"):
        await registry(dns_server).register(ServiceInstance("a", "1", "h", 1))


def test_mode_a_needs_a_port() -> None:
    """A records carry no port, so mode 'a' without one is a configuration error."""
    with pytest.raises(ValueError, match="'port' must be given for mode 'a'"):
        Registry.from_url("dns://127.0.0.1/?mode=a")
    with pytest.raises(ValueError, match="'mode' must be one of"):
        Registry.from_url("dns://127.0.0.1/?mode=txt")


async def test_truncated_answer_retries_over_tcp() -> None:
    """A truncated UDP answer is asked again over TCP."""
    from dnslib import QTYPE, RR, A, DNSRecord  # type: ignore[import-untyped]

    async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        query = DNSRecord.parse(await reader.readexactly(size))
        reply = query.reply()
        reply.add_answer(RR("big.test", QTYPE.A, rdata=A("10.9.0.1")))
        data = reply.pack()
        writer.write(len(data).to_bytes(2, "big") + data)
        await writer.drain()
        writer.close()

    class Truncating(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            reply = DNSRecord.parse(data).reply()
            reply.header.tc = 1
            self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]

    tcp = await asyncio.start_server(serve_tcp, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(Truncating, local_addr=("127.0.0.1", port))
    try:
        reg = DnsRegistry("127.0.0.1", port, mode="a", service_port=80)
        assert [i.address for i in await reg.lookup("big.test.")] == ["10.9.0.1:80"]
    finally:
        udp.close()
        tcp.close()
        await tcp.wait_closed()
