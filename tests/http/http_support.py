"""Loopback servers for the HTTP tests: uvicorn in a thread and a fault-injecting ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from interlink.context import correlation_id
from interlink.resilience.deadline import remaining

Scope = dict[str, Any]


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a thread; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="error",
        lifespan="off",
        ws="none",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


async def send_json(send: Any, status: int, data: Any, headers: list[Any] | None = None) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


class FaultApp:
    """An ASGI app whose answers are chosen by the path:

    ``/ok`` echoes what arrived (headers, correlation id, remaining deadline);
    ``/status/CODE?retry_after=S`` answers CODE; ``/flaky/KEY?fail=N&code=C`` fails the first N
    requests for KEY with C (503) then answers 200; ``/slow?ms=M`` waits M ms;
    ``/slow-first/KEY`` answers the first request for KEY after 2 s, later ones at once;
    ``/hang`` never answers; ``/toggle`` answers 503 while ``self.down`` is set. ``hits`` counts
    requests per path.
    """

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.flaky: Counter[str] = Counter()
        self.down = False
        self.last_headers: dict[str, str] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        self.hits[path] += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.last_headers = headers
        while True:  # drain the body
            message = await receive()
            if not message.get("more_body"):
                break
        if path == "/ok":
            await send_json(
                send,
                200,
                {
                    "headers": headers,
                    "correlation_id": correlation_id(),
                    "remaining": remaining(),
                    "query": query,
                    "method": scope["method"],
                },
            )
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            extra = []
            if "retry_after" in query:
                extra.append((b"retry-after", query["retry_after"].encode()))
            await send_json(send, code, {"status": code}, extra)
        elif path.startswith("/flaky/"):
            key = path.rsplit("/", 1)[1]
            self.flaky[key] += 1
            if self.flaky[key] <= int(query.get("fail", "1")):
                extra = []
                if "retry_after" in query:
                    extra.append((b"retry-after", query["retry_after"].encode()))
                await send_json(send, int(query.get("code", "503")), {"failing": key}, extra)
            else:
                await send_json(send, 200, {"ok": key, "attempts": self.flaky[key]})
        elif path == "/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            await send_json(send, 200, {"slow": True})
        elif path.startswith("/slow-first/"):
            key = path.rsplit("/", 1)[1]
            self.flaky[key] += 1
            if self.flaky[key] == 1:
                await asyncio.sleep(2.0)
            await send_json(send, 200, {"attempt": self.flaky[key]})
        elif path == "/hang":
            await asyncio.sleep(3600)
        elif path == "/toggle":
            if self.down:
                await send_json(send, 503, {"down": True})
            else:
                await send_json(send, 200, {"up": True})
        else:
            await send_json(send, 404, {"missing": path})
