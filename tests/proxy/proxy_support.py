"""A real upstream (aiohttp) and a proxy, both on loopback in an event loop of their own thread,
so tests talk to them with ordinary blocking clients and raw sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from interlink.proxy import (
    FixedUpstream,
    Limits,
    Proxy,
    Route,
    Router,
    RouteSpec,
    RouteTable,
)

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close_server(self, server: asyncio.Server) -> None:
        """Close ``server`` on its own loop and wait until it has closed.

        ``asyncio.Server`` is not thread-safe: closing it from the test thread while its loop
        runs races with the loop's own bookkeeping.
        """

        async def close() -> None:
            server.close()
            close_clients = getattr(server, "close_clients", None)  # Python 3.13+
            if close_clients is not None:
                close_clients()  # from 3.12 on, wait_closed also waits for open connections
            await server.wait_closed()

        self.run(close())

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    payload = {
        "method": request.method,
        "path": request.raw_path,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": body.decode("latin-1"),
    }
    return web.json_response(payload, headers={"x-upstream": "yes", "connection": "keep-alive"})


async def _status(request: web.Request) -> web.Response:
    return web.json_response({"status": "from upstream"}, status=int(request.match_info["code"]))


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    return web.json_response({"slept": request.match_info["ms"]})


async def _stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for i in range(5):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(0.01)
    await response.write_eof()
    return response


async def _big(request: web.Request) -> web.Response:
    size = int(request.match_info["size"])
    return web.Response(body=b"x" * size)


async def _drop(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0)
    raise web.HTTPInternalServerError()


async def _ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str("echo:" + message.data)
    return ws


def upstream_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/status/{code}", _status)
    app.router.add_get("/slow/{ms}", _slow)
    app.router.add_get("/stream", _stream)
    app.router.add_get("/big/{size}", _big)
    app.router.add_get("/drop", _drop)
    app.router.add_get("/ws", _ws)
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def start_upstream() -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(upstream_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server  # the bound port: aiohttp has no public accessor for port 0
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def table(
    specs: Iterable[tuple[Route[RouteSpec]]] | Iterable[Route[RouteSpec]], **kw: Any
) -> RouteTable:
    return RouteTable(router=Router(specs), **kw)  # type: ignore[arg-type]


def route(name: str, path: str, upstream: str, **kw: Any) -> Route[RouteSpec]:
    """A route to fixed ``upstream``; route-matching keywords go to Route, the rest to RouteSpec."""
    match_keys = {"hosts", "methods", "headers", "rewrite"}
    match = {k: v for k, v in kw.items() if k in match_keys}
    spec = {k: v for k, v in kw.items() if k not in match_keys}
    if "methods" in match:
        match["methods"] = frozenset(match["methods"])
    return Route(
        name=name,
        path=path,
        target=RouteSpec(name=name, upstream=FixedUpstream([upstream]), **spec),
        **match,
    )


async def start_proxy(
    routes: RouteTable, limits: Limits | None = None
) -> tuple[Proxy, asyncio.Server, int]:
    proxy = Proxy(routes, limits=limits)
    server = await proxy.serve("127.0.0.1", 0)
    return proxy, server, server.sockets[0].getsockname()[1]


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def status_and_json(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}


def accept_forever(listener: socket.socket, serve: Callable[[socket.socket], None]) -> None:
    """Hand every connection ``listener`` accepts to ``serve``, each in a thread of its own,
    until the listener closes."""

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
