"""The processes ``observability.py`` measures, each with tracing on or off (tracing is set up
per process, so on and off are separate processes; with it on, each also runs a trace writer
process, whose CPU is counted with its parent's).

    python _observability_processes.py http-service NAME on|off|sdk DIR [DOWNSTREAM]
    python _observability_processes.py messaging on|off|sdk DIR COUNT CONCURRENCY

``http-service`` serves ``GET /hop`` (calling DOWNSTREAM's ``/hop`` when given) and writes its
port to ``DIR/NAME.port``. ``messaging`` publishes COUNT messages over NATS from CONCURRENCY
publishers (after a warm-up burst of 300), consumes them in the same process, and prints the
publish-to-handler latencies' percentiles as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any


def traced(name: str, mode: str, directory: str) -> object | None:
    """Tracing for ``mode``: ``off``, ``on`` (what ``setup`` gives for the embedded store), or
    ``sdk`` (the OpenTelemetry SDK's provider and batch processor into the same store)."""
    if mode == "off":
        return None
    from interlink.tracing import StoreExporter, TraceStore, setup

    url = f"sqlite:///{directory}/traces.db"
    if mode == "sdk":
        return setup(name, StoreExporter(TraceStore.from_url(url)))  # type: ignore[arg-type]
    return setup(name, url)


async def http_service(name: str, directory: str, downstream: str | None) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from interlink.http import AsyncClient, InterlinkMiddleware, ServicePolicies

    client = AsyncClient(policies=ServicePolicies(timeout=2.0))

    async def hop(request: Request) -> JSONResponse:
        if downstream is None:
            return JSONResponse({"service": name})
        answer = await client.get(f"{downstream}/hop")
        return JSONResponse({"service": name, "next": answer.json()})

    app = InterlinkMiddleware(Starlette(routes=[Route("/hop", hop)]))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="error", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    Path(directory, f"{name}.port").write_text(str(port))  # noqa: ASYNC240 - once
    await task


async def messaging(count: int, concurrency: int, flush: Any = None) -> dict[str, float]:
    """Publish and consume ``count`` messages; ``flush`` (the provider's ``force_flush``) is
    called before and after the measured burst, so that its CPU column holds the export of
    exactly that burst's spans (not the warm-up's, and not minus the last batch)."""
    from interlink.messaging import Broker

    topic = f"bench.trace.{uuid.uuid4().hex[:8]}"
    broker = Broker.from_url("nats://127.0.0.1:4222")
    latencies: list[float] = []
    expected = [count]
    done = asyncio.Event()

    @broker.subscriber(topic, group="bench", concurrency=64)
    async def handle(payload: bytes) -> None:
        sent = json.loads(payload)["t"]
        latencies.append(time.perf_counter() - sent)
        if len(latencies) >= expected[0]:
            done.set()

    async def burst(n: int) -> None:
        latencies.clear()
        done.clear()
        expected[0] = n
        queue = list(range(n))

        async def publisher() -> None:
            while queue:
                queue.pop()
                await broker.publish(topic, json.dumps({"t": time.perf_counter()}).encode())

        await asyncio.gather(*(publisher() for _ in range(concurrency)))
        await asyncio.wait_for(done.wait(), 120)

    async with broker:
        await burst(min(300, count))  # warm-up, as for HTTP: connections, caches, imports
        if flush is not None:
            flush()
        started = time.process_time() + _children_cpu()
        await burst(count)
        ordered = sorted(latencies)
        if flush is not None:
            flush()
        cpu = time.process_time() + _children_cpu() - started
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
        "count": len(ordered),
        "cpu_us": cpu / count * 1e6,
    }


def _children_cpu() -> float:
    """CPU seconds used so far by this process's children (the trace writer), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "http-service":
        name, mode, directory = argv[1], argv[2], argv[3]
        provider = traced(name, mode, directory)
        try:
            asyncio.run(http_service(name, directory, argv[4] if len(argv) > 4 else None))
        finally:
            if provider is not None:
                provider.shutdown()  # type: ignore[attr-defined]
    elif kind == "messaging":
        mode, directory, count, concurrency = argv[1], argv[2], int(argv[3]), int(argv[4])
        provider = traced("bench", mode, directory)
        flush = None if provider is None else provider.force_flush  # type: ignore[attr-defined]
        result = asyncio.run(messaging(count, concurrency, flush))
        if provider is not None:
            provider.shutdown()  # type: ignore[attr-defined]
        print(json.dumps(result))
    else:
        raise SystemExit(f"unknown process kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
