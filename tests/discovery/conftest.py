"""Servers the discovery tests talk to: the shared Redis and NATS, a private etcd, a loopback DNS
server, and private Redis/NATS instances for the tests that kill and restart them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _discovery_support import ENSURE_ETCD, DnsServer, Etcd, Private, Zone, etcd_argv
from support import free_port


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio (the anyio pytest plugin drives them)."""
    return "asyncio"


# --------------------------------------------------------------------------------------- etcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[Etcd]:
    """A private etcd on a free loopback port, installed from Debian's packages if missing."""
    try:
        # The script bounds every apt step itself (well under 300 s even offline).
        done = subprocess.run(
            ["bash", str(ENSURE_ETCD), "--start"],
            capture_output=True,
            text=True,
            timeout=330,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/ensure-etcd.sh --start took over {exc.timeout}s: {exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"could not start etcd: {done.stderr}")
    pid, url, data = done.stdout.split()
    server = Etcd(int(pid), url, Path(data))
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGKILL)
    for _ in range(100):
        if not alive(server.pid):
            break
        time.sleep(0.02)
    shutil.rmtree(server.data, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: not gone and not a zombie (the script that started etcd has exited,
    so whoever inherited it may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


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
def private_etcd(tmp_path: Path) -> Iterator[Private]:
    """A throwaway etcd (installed by scripts/ensure-etcd.sh if missing) storing in
    ``tmp_path / "etcd"``; delete that directory between stop() and start() to bring it back
    without its data."""
    binary = subprocess.run(
        ["bash", str(ENSURE_ETCD)], capture_output=True, text=True, timeout=330, check=True
    ).stdout.strip()
    port = free_port()
    server = Private(etcd_argv(binary, port, free_port(), tmp_path / "etcd"), port)
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


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    """A UDP DNS server on a free loopback port, in a thread; one per module (stopping one takes
    half a second), so tests use names of their own."""
    from dnslib import QTYPE, RR, SRV, A, DNSLabel  # type: ignore[import-untyped]
    from dnslib.server import BaseResolver, DNSServer  # type: ignore[import-untyped]

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
