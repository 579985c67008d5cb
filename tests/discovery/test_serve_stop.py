"""serve_asgi with a stop event and no signal handling: several servers in one process."""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.request
from typing import Any

from _discovery_support import unique

from interlink.discovery import Registry, ServiceInstance
from interlink.discovery.serve import serve_asgi


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
        data: bytes = response.read()
        return data


def test_two_servers_stop_on_their_events_and_leave_the_signals_alone() -> None:
    """Each server deregisters and exits when its own event is set; SIGINT's handler is
    untouched while they serve (handle_signals=False)."""

    async def main() -> None:
        url = f"memory://{unique('reg')}"
        registry = Registry.from_url(url)
        ports = [free_port(), free_port()]
        stops = [asyncio.Event(), asyncio.Event()]
        handler = signal.getsignal(signal.SIGINT)
        servers = [
            asyncio.create_task(
                serve_asgi(
                    app,
                    url,
                    ServiceInstance("web", f"w{n}", "127.0.0.1", port),
                    host="127.0.0.1",
                    propagation_delay=0.05,
                    drain_timeout=1,
                    stop=stop,
                    handle_signals=False,
                    log_level="error",
                )
            )
            for n, (port, stop) in enumerate(zip(ports, stops, strict=True))
        ]
        for _ in range(200):
            if len(await registry.lookup("web")) == 2:
                break
            await asyncio.sleep(0.02)
        assert await asyncio.to_thread(_get, ports[0]) == b"ok"
        assert signal.getsignal(signal.SIGINT) is handler
        stops[0].set()
        await asyncio.wait_for(servers[0], 10)
        assert [i.instance_id for i in await registry.lookup("web")] == ["w1"]
        with socket.socket() as sock:  # nobody listens there any more: the socket was closed
            assert sock.connect_ex(("127.0.0.1", ports[0])) != 0
        assert await asyncio.to_thread(_get, ports[1]) == b"ok"
        stops[1].set()
        await asyncio.wait_for(servers[1], 10)
        assert await registry.lookup("web") == []
        await registry.aclose()

    asyncio.run(main())
