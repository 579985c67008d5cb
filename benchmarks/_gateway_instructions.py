"""CPU instructions per request of the gateway, counted by valgrind: the figure to decide a
change of the engine by on a shared machine (wall-clock figures swing by tens of per cent).

The gateway runs under ``valgrind --tool=callgrind`` with the configuration of
``benchmarks/gateway.py`` (one route among ten, RS256 JWT auth answered by the verified-token
cache, a per-consumer rate limit that never triggers) in front of an nginx answering ``ok``.
A client keeps ``--connections`` keep-alive connections busy (a request on each, the next one
when its answer arrived); after ``--warmup`` requests (pools, caches, the specializing
interpreter) the counters are zeroed, ``--requests`` more are sent, and the counters dumped:
start-up and warm-up never count. Prints instructions per request.

Usage: ``python benchmarks/_gateway_instructions.py [--requests N] [--connections C]
[--keep DIR]`` (needs ``valgrind``, and ``nginx`` which ``benchmarks/gateway.py`` installs).
"""

from __future__ import annotations

import argparse
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import (  # type: ignore[import-not-found]
    _ensure_tools,
    _free_port,
    _gateway_command,
    _gateway_config,
    _keys,
    _nginx,
    _routes,
    _wait_port,
)


def _drive(port: int, token: str, requests: int, connections: int) -> None:
    """Send ``requests`` requests over ``connections`` keep-alive connections."""
    request = (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    sent = 0
    for _ in range(min(connections, requests)):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        sent += 1
        buffers[sock] = b""
        selector.register(sock, selectors.EVENT_READ)
    answered = 0
    while answered < requests:
        for key, _ in selector.select(timeout=60):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the gateway closed a connection")
            buffer = buffers[sock] + data
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buffer[:end])
                if found is None:
                    raise RuntimeError(f"an answer without a length: {buffer[:end]!r}")
                size = end + 4 + int(found.group(1))
                if len(buffer) < size:
                    break
                if not buffer.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the gateway answered {buffer[:size]!r}")
                buffer = buffer[size:]
                answered += 1
                if sent < requests:
                    sock.sendall(request)
                    sent += 1
            buffers[sock] = buffer
    for sock in buffers:
        selector.unregister(sock)
        sock.close()


def _total(path: Path) -> int:
    text = path.read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert found, f"no totals in {path}"
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="keep the callgrind output here")
    args = parser.parse_args()
    _, nginx_binary = _ensure_tools()
    with tempfile.TemporaryDirectory(prefix="interlink-gw-instr-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        token = _keys(folder)
        upstream_port, gateway_port = _free_port(), _free_port()
        upstream = _nginx(nginx_binary, folder / "upstream", upstream_port, None)
        config = _gateway_config(
            folder, gateway_port, None, upstream_port, _routes(upstream_port, 9, "r")
        )
        out = folder / "callgrind.out"
        gateway = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                *_gateway_command(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_port(gateway_port, timeout=600.0)
            _drive(gateway_port, token, args.warmup, args.connections)
            subprocess.run(["callgrind_control", "--zero", str(gateway.pid)], check=True)
            started = time.monotonic()
            _drive(gateway_port, token, args.requests, args.connections)
            subprocess.run(["callgrind_control", "--dump", str(gateway.pid)], check=True)
            seconds = time.monotonic() - started
            dumps = sorted(folder.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
            total = _total(dumps[-1])
        finally:
            gateway.terminate()
            gateway.wait(60)
            upstream.terminate()
            upstream.wait(15)
    print(
        f"{total / args.requests:,.0f} instructions/request "
        f"({args.requests} requests, {args.connections} connections, {seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
