"""Servers the discovery tests talk to: the shared Redis and NATS, a private etcd, a loopback DNS
server, and private Redis/NATS instances for the tests that kill and restart them."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _discovery_support import DnsServer, Etcd, Private, Zone, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the anyio pytest plugin drives them)."""
    return "asyncio"


# --------------------------------------------------------------------------------------- etcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    """A private etcd on a free loopback port, installed from Debian's packages if missing."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-etcd.sh"), "--start"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"could not start etcd: {done.stderr}")
    pid, url, data = done.stdout.split()
    server = Etcd(int(pid), url, Path(data))
    yield server
    with contextlib.suppress(ProcessLookupError):
        subprocess.run(["kill", "-9", str(server.pid)], check=False)
    for _ in range(100):
        if not Path(f"/proc/{server.pid}").exists():
            break
        time.sleep(0.02)
    shutil.rmtree(server.data, ignore_errors=True)


# -------------------------------------------------------------------- private redis and nats


@pytest.fixture
def private_redis() -> Iterator[Private]:
    """A throwaway redis-server on a free port, no persistence."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = Private([*argv, "--appendonly", "no"], port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[Private]:
    """A throwaway nats-server with JetStream, storing in the test's temp dir."""
    port = free_port()
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]
    server = Private(argv, port)
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------------------------- dns


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A UDP DNS server on a free loopback port, in a thread."""
    from dnslib import QTYPE, RR, SRV, A, DNSLabel
    from dnslib.server import BaseResolver, DNSServer

    zone = Zone()

    class Resolver(BaseResolver):  # type: ignore[misc]
        def resolve(self, request, handler):  # type: ignore[no-untyped-def]
            zone.queries += 1
            reply = request.reply()
            name = str(request.q.qname).rstrip(".")
            qtype = QTYPE[request.q.qtype]
            if qtype == "A" and name in zone.a:
                for ip in zone.a[name]:
                    reply.add_answer(RR(DNSLabel(name), QTYPE.A, rdata=A(ip), ttl=5))
            elif qtype == "SRV" and name in zone.srv:
                for port, target in zone.srv[name]:
                    srv = SRV(priority=0, weight=10, port=port, target=target)
                    reply.add_answer(RR(DNSLabel(name), QTYPE.SRV, rdata=srv, ttl=5))
                    for ip in zone.a.get(target, []):
                        reply.add_ar(RR(DNSLabel(target), QTYPE.A, rdata=A(ip), ttl=5))
            elif name not in zone.a and name not in zone.srv:
                reply.header.rcode = 3  # NXDOMAIN
            return reply

    port = free_port_udp()
    server = DNSServer(Resolver(), port=port, address="127.0.0.1", logger=_SilentLogger())
    server.start_thread()
    yield DnsServer(port, zone, server)
    server.stop()
    server.server.server_close()


def free_port_udp() -> int:
    """A loopback UDP port nobody uses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SilentLogger:
    """dnslib logs every query to stdout by default; tests want quiet."""

    def __getattr__(self, name: str) -> object:
        return lambda *args, **kwargs: None
