"""A saga stays one trace with the request that started it, across an orchestrator killed with
kill -9 and restarted; commands it sends carry the step's context."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from interlink.tracing import TraceStore

WORKER = str(Path(__file__).with_name("saga_worker.py"))


def test_a_saga_resumed_after_kill_9_stays_in_the_request_trace(tmp_path: Path) -> None:
    """Root span under the request; every step span (from both processes) under the root."""
    first = subprocess.Popen(
        [sys.executable, WORKER, str(tmp_path), "start"], stdout=subprocess.PIPE, text=True
    )
    assert first.stdout is not None
    trace_id = first.stdout.readline().strip()
    deadline = time.monotonic() + 30
    while not (tmp_path / "charging").exists():  # reserve done, charge running: kill now
        assert time.monotonic() < deadline, "the saga never reached its charge step"
        time.sleep(0.02)
    time.sleep(0.7)  # the first process exports its finished spans every 0.5 s
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    (tmp_path / "charge.ok").write_text("yes")
    second = subprocess.run(
        [sys.executable, WORKER, str(tmp_path), "resume"],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    assert second.stdout.strip().splitlines()[-1] == "COMPLETED"

    spans = TraceStore.from_url(f"sqlite:///{tmp_path}/traces.db").trace(trace_id)
    by_name = {s.name: s for s in spans}
    request = by_name["POST /orders"]
    root = by_name["saga place_order"]
    assert root.parent_id == request.span_id
    assert root.attributes["saga.id"] == "s-1"
    steps = [s for s in spans if s.name.startswith("saga place_order: ")]
    names = sorted(s.name for s in steps)
    # reserve from the first process; charge finished by the second (the first's attempt died
    # with its process, unfinished, so it was never exported)
    assert names == ["saga place_order: charge", "saga place_order: reserve"], names
    assert all(s.parent_id == root.span_id for s in steps)
    charge = by_name["saga place_order: charge"]
    assert charge.attributes["saga.attempt"] >= 1
    assert {s.trace_id for s in spans} == {trace_id}


def test_commands_carry_the_step_span() -> None:
    """A Send's command headers get the current trace context (the step span's)."""
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from interlink.messaging import Broker, Envelope
    from interlink.saga import Orchestrator, SagaDefinition, Send, Step, reply_body, reply_headers

    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    seen: dict[str, str] = {}

    async def scenario() -> None:
        broker = Broker.from_url("memory://saga-trace")

        @broker.subscriber("payments.authorize", group="payment")
        async def authorize(command: Envelope) -> None:
            headers = dict(command.headers)
            seen.update(headers)
            await broker.publish(
                "payments.replies", reply_body(ok=True), headers=reply_headers(headers)
            )

        saga = SagaDefinition(
            "pay",
            [Step("authorize", Send("payments.authorize", reply_topic="payments.replies"))],
        )
        orchestrator = Orchestrator(
            "sqlite:///:memory:", [saga], publisher=broker, poll_interval=0.05,
            tracer_provider=provider,
        )  # fmt: skip
        orchestrator.subscribe_replies(broker, "payments.replies")
        async with broker, orchestrator:
            with provider.get_tracer("t").start_as_current_span("request"):
                await orchestrator.start("pay", {}, saga_id="p-1")
            state = await orchestrator.wait("p-1", max_wait=20)
        assert state.status.value == "COMPLETED"

    asyncio.run(scenario())
    provider.shutdown()
    (step,) = [s for s in exported.get_finished_spans() if s.name == "saga pay: authorize"]
    _, trace_id, parent_id, _ = seen["traceparent"].split("-")
    assert int(trace_id, 16) == step.context.trace_id
    assert int(parent_id, 16) == step.context.span_id
