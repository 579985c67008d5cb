"""``serve_asgi`` registers only once uvicorn's socket accepts connections.

uvicorn opens its socket after the app's lifespan startup, so registering at
``lifespan.startup.complete`` would announce an instance that refuses its first callers. The
server runs in its own process with a registry whose ``register`` first tries to connect to the
instance's port and prints what happened.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from _discovery_support import unique
from support import free_port

_SERVER = """
import asyncio, socket, sys
from interlink.discovery import ServiceInstance
from interlink.discovery.backends.sqlite import SqliteRegistry
from interlink.discovery.serve import serve_asgi

class Probing(SqliteRegistry):
    async def register(self, instance, ttl=3.0):
        try:
            socket.create_connection((instance.host, instance.port), timeout=1.0).close()
            print("accepting", flush=True)
        except OSError as exc:
            print(f"refused {exc}", flush=True)
        return await super().register(instance, ttl)

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rpartition(".")[2]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

path, service, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
instance = ServiceInstance(service, "i1", "127.0.0.1", port)
asyncio.run(serve_asgi(app, Probing(path), instance, host="127.0.0.1", propagation_delay=0.0,
                       drain_timeout=1.0, log_level="warning"))
"""


def test_the_socket_accepts_when_register_runs(tmp_path: Path) -> None:
    """At the moment serve_asgi calls register(), a connection to the port succeeds."""
    argv = [sys.executable, "-c", _SERVER, str(tmp_path / "r.db"), unique(), str(free_port())]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "accepting\n", line
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
