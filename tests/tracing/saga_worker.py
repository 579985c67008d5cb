"""An orchestrator process for the saga tracing test: ``saga_worker.py DIR start|resume``.

``start`` sets up tracing, starts saga ``s-1`` inside a request span and prints the trace id,
then keeps driving: its ``charge`` step hangs until the test kills the process (kill -9).
``resume`` (the restarted orchestrator, same owner name) finishes the saga: ``charge`` returns
at once when ``DIR/charge.ok`` exists.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from interlink.saga import Orchestrator, SagaDefinition, Step
from interlink.tracing import setup

DIR = Path(sys.argv[1])


def reserve(ctx: object) -> str:
    return "reserved"


async def charge(ctx: object) -> str:
    while not (DIR / "charge.ok").exists():
        (DIR / "charging").write_text("yes")
        await asyncio.sleep(0.05)
    return "charged"


SAGA = SagaDefinition("place_order", [Step("reserve", reserve), Step("charge", charge)])


async def main(mode: str, provider: object) -> None:
    orchestrator = Orchestrator(
        f"sqlite:///{DIR}/sagas.db",
        [SAGA],
        owner="order-service",
        poll_interval=0.05,
        tracer_provider=provider,
    )
    async with orchestrator:
        if mode == "start":
            tracer = provider.get_tracer("test")  # type: ignore[attr-defined]
            with tracer.start_as_current_span("POST /orders") as span:
                await orchestrator.start("place_order", {"order": "o-1"}, saga_id="s-1")
                print(f"{span.get_span_context().trace_id:032x}", flush=True)
            await asyncio.Event().wait()  # until killed
        state = await orchestrator.wait("s-1", max_wait=60)
        print(state.status.value, flush=True)


if __name__ == "__main__":
    mode = sys.argv[2]
    provider = setup("order", f"sqlite:///{DIR}/traces.db", set_global=False)
    try:
        asyncio.run(main(mode, provider))
    finally:
        provider.shutdown()  # type: ignore[attr-defined]
