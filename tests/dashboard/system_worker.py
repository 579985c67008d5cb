"""One process of the small traced system the dashboard tests look at: a -> b (HTTP), b ->
broker -> c. Each process sets up its own tracing into one store and exposes /metrics.

``python system_worker.py ROLE DIR [B_URL]`` with ROLE ``a``, ``b`` or ``c``; files in DIR:
``traces.db``, ``events.db`` (the SQLite broker), ``ROLE.port`` (the HTTP port, written once
serving), ``c.received`` (ids c handled, a line each), ``c.fail`` (while it exists, c fails).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interlink import Retry
from interlink.http import AsyncClient, InterlinkMiddleware, ServicePolicies
from interlink.messaging import Broker, Envelope
from interlink.metrics import Instrumentation, instrument
from interlink.tracing import setup

ROLE, DIR = sys.argv[1], Path(sys.argv[2])
B_URL = sys.argv[3] if len(sys.argv) > 3 else None


def wired(app: Starlette) -> Instrumentation:
    """Metrics outermost: a scrape of /metrics is not a request worth a trace."""
    return instrument(InterlinkMiddleware(app))


async def serve_http(app: Instrumentation) -> None:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    (DIR / f"{ROLE}.port").write_text(str(port))
    await task


async def role_a() -> None:
    policies = ServicePolicies(
        timeout=1.0, retries=0, minimum_calls=2, failure_rate_threshold=0.5, cooldown=30.0
    )
    clients: dict[str, Any] = {}

    async def hop(request: Request) -> JSONResponse:
        try:
            answer = await clients["b"].get("/hop")
        except Exception as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        return JSONResponse({"a": "ok", "b": answer.json()})

    a = wired(Starlette(routes=[Route("/hop", hop)]))
    client = AsyncClient(listeners=a.listeners)
    clients["b"] = client.service("b", url=B_URL, policies=policies)
    breaker = clients["b"].downstream.breaker
    if breaker is not None:  # exported from the start, not only once it changes state
        a.policies.watch(breaker)
    await serve_http(a)


async def role_b() -> None:
    broker = Broker.from_url(f"sqlite:///{DIR}/events.db")

    async def hop(request: Request) -> JSONResponse:
        mid = await broker.publish("orders.placed", {"fail": "fail" in request.query_params})
        return JSONResponse({"b": "ok", "message": mid})

    await serve_http(wired(Starlette(routes=[Route("/hop", hop)])))


async def role_c() -> None:
    broker = Broker.from_url(f"sqlite:///{DIR}/events.db?poll=0.02")

    @broker.subscriber("orders.placed", group="c", retry=Retry(0), max_deliveries=1, concurrency=4)
    async def handle(event: Envelope) -> None:
        if (DIR / "c.fail").exists():
            raise RuntimeError("c is told to fail")
        with (DIR / "c.received").open("a") as f:
            f.write(f"{event.id}\n")

    (DIR / "c.port").write_text("ready")
    await broker.run()


async def role_saga() -> None:
    """An orchestrator with one saga parked: its compensation fails while ``saga.fail``
    exists; once resumed (and the file gone) it compensates and ends COMPENSATED."""
    from interlink.saga import Orchestrator, SagaDefinition, Step

    def reserve(ctx: object) -> str:
        return "reserved"

    def release(ctx: object) -> None:
        if (DIR / "saga.fail").exists():
            raise RuntimeError("the stock service is down")

    def charge(ctx: object) -> None:
        raise RuntimeError("card declined")

    definition = SagaDefinition(
        "place_order",
        [
            Step("reserve", reserve, release, compensation_retry=Retry(0)),
            Step("charge", charge, retry=Retry(0)),
        ],
    )
    async with Orchestrator(
        f"sqlite:///{DIR}/sagas.db", [definition], poll_interval=0.1, lease=5.0
    ) as orch:
        await orch.start("place_order", {"order": "o-1"}, saga_id="order-o-1")
        (DIR / "saga.port").write_text("ready")
        await asyncio.Event().wait()


if __name__ == "__main__":
    provider = setup(ROLE, f"sqlite:///{DIR}/traces.db")
    try:
        asyncio.run({"a": role_a, "b": role_b, "c": role_c, "saga": role_saga}[ROLE]())
    finally:
        provider.shutdown()
