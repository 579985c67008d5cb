"""Self-registration: register on start; on shutdown deregister, then drain, then exit."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from _discovery_support import unique
from support import free_port, until

from interlink.discovery import Registry, ServiceInstance
from interlink.discovery.backends.memory import MemoryRegistry
from interlink.discovery.serve import RegisteredASGI, Registration, quiet_server, serve_grpc

pytestmark = pytest.mark.anyio


class App:
    """An ASGI app with lifespan support whose requests wait for ``release``."""

    def __init__(self, log: list[str], lifespan: bool = True) -> None:
        self.log = log
        self.lifespan = lifespan
        self.release = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            if not self.lifespan:
                raise RuntimeError("no lifespan here")
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.log.append("app shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.release.wait()
        self.log.append("request done")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def drive_lifespan(app: Any, inbox: asyncio.Queue[dict[str, Any]], outbox: list[str]) -> None:
    async def send(message: dict[str, Any]) -> None:
        outbox.append(message["type"])

    await app({"type": "lifespan"}, inbox.get, send)


async def noop_send(message: Any) -> None:
    return None


async def noop_receive() -> dict[str, Any]:
    return {"type": "http.request"}


async def lifecycle(lifespan: bool) -> None:
    registry = MemoryRegistry()
    svc = unique()
    instance = ServiceInstance(svc, "a", "127.0.0.1", 8000)
    log: list[str] = []
    inner = App(log, lifespan=lifespan)
    app = RegisteredASGI(inner, registry, instance, propagation_delay=0.05, drain_timeout=5)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[str] = []
    runner = asyncio.get_running_loop().create_task(drive_lifespan(app, inbox, sent))
    await inbox.put({"type": "lifespan.startup"})
    await until(lambda: sent == ["lifespan.startup.complete"])
    assert await registry.lookup(svc) == [instance]

    request = asyncio.get_running_loop().create_task(app({"type": "http"}, noop_receive, noop_send))
    await until(lambda: app.in_flight == 1)
    await inbox.put({"type": "lifespan.shutdown"})
    await until(lambda: app.registration.lease is not None and app.registration.lease.closed)
    assert await registry.lookup(svc) == []  # deregistered while the request is in flight
    await asyncio.sleep(0.1)
    assert "lifespan.shutdown.complete" not in sent  # still draining
    log.append("released")
    inner.release.set()
    await request
    await runner
    assert sent[-1] == "lifespan.shutdown.complete"
    expected = ["released", "request done"] + (["app shutdown"] if lifespan else [])
    assert log == expected


async def test_asgi_middleware_registers_then_deregisters_before_draining() -> None:
    """Startup registers; shutdown deregisters first, waits for in-flight, then the app stops."""
    await lifecycle(lifespan=True)


async def test_asgi_middleware_runs_the_lifespan_for_apps_without_one() -> None:
    """An app that does not speak lifespan still gets registered and drained."""
    await lifecycle(lifespan=False)


async def test_registration_drain_gives_up_after_the_timeout() -> None:
    """A request that never finishes does not hold shutdown beyond drain_timeout."""
    registration = Registration(
        MemoryRegistry(),
        ServiceInstance(unique(), "a", "h", 1),
        propagation_delay=0,
        drain_timeout=0.05,
        in_flight=lambda: 1,
    )
    async with registration:
        pass
    assert registration.lease is not None
    assert registration.lease.closed


async def test_grpc_server_deregisters_then_drains_then_stops() -> None:
    """serve_grpc: on stop the instance leaves the registry while an RPC finishes, then exits."""
    import grpc
    import grpc.aio

    started = asyncio.Event()

    async def slow(request: bytes, context: Any) -> bytes:
        started.set()
        await asyncio.sleep(0.3)
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    registry = MemoryRegistry()
    svc = unique()
    instance = ServiceInstance(svc, "g", "127.0.0.1", port, protocol="grpc")
    stop = asyncio.Event()
    serving = asyncio.get_running_loop().create_task(
        serve_grpc(
            server, registry, instance, stop=stop, propagation_delay=0.05, handle_signals=False
        )
    )
    await until(lambda: bool(registry._store.entries.get(svc)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method: Any = channel.unary_unary("/test.Slow/Call")  # untyped: raw bytes in and out
        call = method(b"")
        await started.wait()
        stop.set()
        await until(lambda: not registry._store.entries.get(svc))
        assert not serving.done()  # deregistered, still draining the call
        assert await call == b"done"
    await serving


# A uvicorn server run by serve_asgi, whose /slow request takes a second.
_UVICORN_SERVER = """
import asyncio, sys
from interlink.discovery import ServiceInstance
from interlink.discovery.serve import serve_asgi

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await asyncio.sleep(1.0 if scope["path"] == "/slow" else 0.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})

url, port = sys.argv[1], int(sys.argv[2])
instance = ServiceInstance("web", "w1", "127.0.0.1", port)
asyncio.run(
    serve_asgi(
        app, url, instance, host="127.0.0.1", propagation_delay=0.3, drain_timeout=5,
        log_level="error",
    )
)
"""


async def test_serve_asgi_deregisters_on_sigterm_then_drains_then_exits(tmp_path: Path) -> None:
    """Under uvicorn, SIGTERM deregisters at once while the server still accepts; the request
    in flight completes; then the process exits cleanly."""
    import httpx

    url, port = f"sqlite:///{tmp_path}/registry.db", free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _UVICORN_SERVER, url, str(port)
    )
    registry = Registry.from_url(url)
    try:
        await until(lambda: _listening(port), within=10.0)
        await until(lambda: registry.lookup("web"), within=5.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            slow = asyncio.ensure_future(client.get("/slow"))
            await asyncio.sleep(0.2)
            server.send_signal(signal.SIGTERM)
            await until(lambda: _empty(registry.lookup("web")), within=0.5)
            assert not slow.done()  # deregistered while the slow request is still in flight
            fresh = await client.get("/fast")  # during propagation_delay: still accepting
            assert (fresh.status_code, fresh.text) == (200, "/fast")
            answer = await slow
            assert (answer.status_code, answer.text) == (200, "/slow")  # drained, not dropped
        assert await asyncio.wait_for(server.wait(), 5.0) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        await registry.aclose()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _empty(found: Any) -> bool:
    return not await found


async def test_a_quiet_server_serves_and_leaves_the_signals_alone() -> None:
    """``quiet_server`` answers, installs no SIGTERM/SIGINT handler, and ends on should_exit."""
    import uvicorn

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    port = free_port()
    server = quiet_server(
        uvicorn.Config(hello, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started, 10, "uvicorn started")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    server.should_exit = True
    await asyncio.wait_for(task, 10)
