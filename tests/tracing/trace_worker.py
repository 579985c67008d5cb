"""A process of a traced system, for the tracing tests: each process sets up its own SDK.

``serve NAME DB PORTFILE [DOWNSTREAM]``: an HTTP service (Starlette + InterlinkMiddleware) whose
``GET /hop`` calls DOWNSTREAM's ``/hop`` when given; it writes its port to PORTFILE and serves
until SIGTERM. ``call NAME DB URL CID``: one traced call to URL under correlation id CID; prints
the trace id. Both export into the trace store DB.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interlink.context import use_correlation_id
from interlink.http import AsyncClient, InterlinkMiddleware
from interlink.tracing import setup


def serve(name: str, db: str, portfile: str, downstream: str | None) -> None:
    provider = setup(name, f"sqlite:///{db}")
    client = AsyncClient()

    async def hop(request: Request) -> JSONResponse:
        if downstream is not None:
            answer = await client.get(f"{downstream}/hop")
            return JSONResponse({"service": name, "next": answer.json()})
        if request.query_params.get("fail"):
            return JSONResponse({"service": name}, status_code=503)
        return JSONResponse({"service": name})

    app = InterlinkMiddleware(Starlette(routes=[Route("/hop", hop)]))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off")
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        Path(portfile).write_text(str(port))  # noqa: ASYNC240 - once, before serving
        await task
        await client.aclose()

    asyncio.run(main())
    provider.shutdown()


def call(name: str, db: str, url: str, cid: str) -> None:
    provider = setup(name, f"sqlite:///{db}")
    tracer = provider.get_tracer("test")

    async def main() -> None:
        async with AsyncClient() as client:
            with use_correlation_id(cid), tracer.start_as_current_span("checkout") as span:
                await client.get(url)
                print(f"{span.get_span_context().trace_id:032x}", flush=True)

    asyncio.run(main())
    provider.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
