"""Helpers shared by the discovery tests (a module of its own: conftest files are not imported)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
ROOT = Path(__file__).resolve().parents[2]
ENSURE_ETCD = ROOT / "scripts" / "ensure-etcd.sh"


@dataclass
class Etcd:
    """A private etcd: its client URL (http://127.0.0.1:N) and the ``etcd://`` form."""

    pid: int
    url: str
    data: Path

    @property
    def registry_url(self) -> str:
        return "etcd://" + self.url.split("://", 1)[1]


def unique(prefix: str = "svc") -> str:
    """A service name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


async def until(condition: Callable[[], bool], within: float = 3.0) -> float:
    """Wait (really, briefly) for a background task to make ``condition`` true; returns how
    long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)
    return loop.time() - start


@dataclass
class Private:
    """A server process this test owns: ``stop()`` kills it hard, ``start()`` brings it back on
    the same port (and, for NATS, the same storage directory)."""

    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


class Zone:
    """Records the loopback DNS server answers, editable while it runs."""

    def __init__(self) -> None:
        self.a: dict[str, list[str]] = {}
        self.srv: dict[str, list[tuple[int, str]]] = {}  # name -> [(port, target)]
        self.queries = 0


@dataclass
class DnsServer:
    """A dnslib server on 127.0.0.1:port answering from ``zone``."""

    port: int
    zone: Zone
    server: object


def etcd_argv(binary: str, port: int, peer: int, data: Path) -> list[str]:
    """The command line of a one-member etcd on loopback, with ensure-etcd.sh's fast raft
    timings (10 ms heartbeat, 100 ms election)."""
    client, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    return [
        binary,
        "--name",
        "interlink-test",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"interlink-test={peer_url}",
        "--heartbeat-interval",
        "10",
        "--election-timeout",
        "100",
        "--log-level",
        "error",
    ]
