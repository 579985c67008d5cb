"""CPU instructions that tracing adds, counted by valgrind: per span, per message, per request.

With tracing on (``setup(name, "sqlite:///...")``: the embedded store, 100 % sampling) each
scenario runs the instrumentation's real code paths, and the same scenario runs again with
tracing off; the difference is what tracing adds. Each run is its own process under
``valgrind --tool=callgrind`` twice (``SMALL`` and ``LARGE`` iterations), and the difference is
divided by ``LARGE - SMALL``, which cancels the interpreter's start-up and imports. The export
thread's work (turning spans into records and handing them to the writer process) runs in the
measured process and is counted; the writer process's SQLite work is not (it is another
process, on another core).

Scenarios:

- ``span``: ``tracer.start_span(name, attributes=...)`` and ``end()``, the bare API pair;
- ``server``: ``Spans.server`` around a block, with a caller's ``traceparent`` and a
  correlation id, the route and status set at the end (what ``InterlinkMiddleware`` does);
- ``client``: ``Spans.start_client``, its context injected into the request headers, the
  status set, ended (what the HTTP client does per attempt);
- ``message``: publish -> consume of one message over the ``memory://`` broker (a PRODUCER and
  a CONSUMER span when on), one at a time;
- ``request``: a two-hop HTTP request (aiohttp -> A -> B, both ``InterlinkMiddleware`` over
  Starlette under uvicorn on loopback, A calling B with ``interlink.http.AsyncClient``), all in
  this process, one at a time.

Usage: ``python benchmarks/_tracing_instructions.py [SCENARIO ...]`` (needs ``valgrind``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _harness as h

SCENARIOS = ("span", "server", "client", "message", "request")
#: Iterations of the two runs per scenario (requests are slower: fewer).
COUNTS = {"request": (200, 1000)}
DEFAULT_COUNTS = (1000, 5000)


def _tracing(on: bool, directory: str) -> Any:
    if not on:
        return None
    from interlink.tracing import setup

    return setup("bench", f"sqlite:///{directory}/traces.db")


def _span(n: int) -> None:
    from opentelemetry import trace

    tracer = trace.get_tracer("bench")
    attributes = {"http.request.method": "GET", "url.path": "/hop"}
    for _ in range(n):
        tracer.start_span("GET", attributes=attributes).end()


def _server(n: int) -> None:
    from interlink.context import use_correlation_id
    from interlink.tracing import Spans, extract

    spans = Spans()
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with use_correlation_id("c0ffee"):
        for _ in range(n):
            parent = extract(carrier)
            attributes = {"http.request.method": "GET", "url.path": "/hop"}
            with spans.server("GET", parent=parent, attributes=attributes) as span:
                if span is not None:
                    span.update_name("GET /hop")
                    span.set_attribute("http.route", "/hop")
                    span.set_attribute("http.response.status_code", 200)


def _client(n: int) -> None:
    from multidict import CIMultiDict

    from interlink.context import use_correlation_id
    from interlink.tracing import Spans, inject
    from interlink.tracing.propagation import inject_span

    spans = Spans()
    with use_correlation_id("c0ffee"):
        for _ in range(n):
            headers: CIMultiDict[str] = CIMultiDict()
            span = None
            if spans.tracer() is not None:
                span = spans.start_client(
                    "GET", {"http.request.method": "GET", "url.full": "http://b/hop"}
                )
            if span is None:
                inject(headers)
            else:
                inject_span(headers, span)
                span.set_attribute("http.response.status_code", 200)
                span.end()


async def _message(n: int) -> None:
    from interlink.messaging import Broker

    broker = Broker.from_url("memory://")
    got = asyncio.Event()

    @broker.subscriber("bench.trace", group="bench")
    async def handle(payload: bytes) -> None:
        got.set()

    async with broker:
        for _ in range(n):
            got.clear()
            await broker.publish("bench.trace", b'{"t": 1}')
            await got.wait()


async def _request(n: int) -> None:
    import aiohttp
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from interlink.http import AsyncClient, InterlinkMiddleware, ServicePolicies

    client = AsyncClient(policies=ServicePolicies(timeout=60.0))
    servers: list[uvicorn.Server] = []

    async def serve(downstream: str | None) -> str:
        async def hop(request: Request) -> JSONResponse:
            if downstream is None:
                return JSONResponse({"service": "b"})
            answer = await client.get(f"{downstream}/hop")
            return JSONResponse({"service": "a", "next": answer.json()})

        app = InterlinkMiddleware(Starlette(routes=[Route("/hop", hop)]))
        server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="error", lifespan="off", access_log=False
            )
        )
        servers.append(server)
        asyncio.get_running_loop().create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    b = await serve(None)
    a = await serve(b)
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(f"{a}/hop") as answer:
                await answer.read()
                assert answer.status == 200
    await client.aclose()
    for server in servers:
        server.should_exit = True


def child(scenario: str, on: bool, n: int) -> None:
    """Run ``n`` iterations of ``scenario`` (under valgrind), tracing ``on`` or off."""
    with tempfile.TemporaryDirectory() as d:
        provider = _tracing(on, d)
        runs: dict[str, Callable[[int], Awaitable[None] | None]] = {
            "span": _span,
            "server": _server,
            "client": _client,
            "message": _message,
            "request": _request,
        }
        if scenario == "span" and not on:
            return  # the API's no-op tracer: nothing to compare with
        # a warm-up: imports, caches, the export thread and the writer process started
        for count in (20, n):
            done = runs[scenario](count)
            if done is not None:
                asyncio.run(done)  # type: ignore[arg-type]
            if provider is not None:
                provider.force_flush()
        if provider is not None:
            provider.shutdown()


def _instructions(scenario: str, on: bool, n: int) -> int:
    return h.callgrind_instructions(
        [sys.executable, __file__, "--child", scenario, "on" if on else "off", str(n)]
    )


def per_iteration(scenario: str, on: bool) -> float:
    """Instructions per iteration of ``scenario`` with tracing ``on`` or off."""
    small, large = COUNTS.get(scenario, DEFAULT_COUNTS)
    return (_instructions(scenario, on, large) - _instructions(scenario, on, small)) / (
        large - small
    )


def main(scenarios: list[str]) -> None:
    jobs = [(s, on) for s in scenarios for on in (False, True)]
    with ThreadPoolExecutor(2) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: per_iteration(*job), jobs), strict=True))
    for s in scenarios:
        off, on = counts[s, False], counts[s, True]
        print(f"{s:8} off {off:>10,.0f}  on {on:>10,.0f}  added {on - off:>10,.0f} instr/iteration")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "on", int(sys.argv[4]))
    else:
        main(sys.argv[1:] or list(SCENARIOS))
