"""Helpers shared by the discovery tests (a module of its own: conftest files are not imported)."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from support import wait_port

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
