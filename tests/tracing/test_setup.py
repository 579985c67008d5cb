"""``interlink.tracing.setup``: one trace across real processes, sampling, fork, span events,
and log lines carrying the ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.trace import Status, StatusCode

from interlink.context import use_correlation_id
from interlink.messaging import Broker, Envelope
from interlink.outbox import Outbox, OutboxRelay
from interlink.resilience import Retry
from interlink.tracing import (
    CorrelationFilter,
    JsonFormatter,
    SpanEvents,
    TraceStore,
    setup,
)

WORKER = str(Path(__file__).with_name("trace_worker.py"))


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        time.sleep(0.05)
    raise TimeoutError(f"no port in {path}")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Two HTTP services, a -> b, each its own process with its own SDK, one trace store."""
    db = tmp_path / "traces.db"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        b = subprocess.Popen([sys.executable, WORKER, "serve", "b", str(db), str(tmp_path / "b")])
        procs.append(b)
        b_url = f"http://127.0.0.1:{_wait_for(tmp_path / 'b', b)}"
        a = subprocess.Popen(
            [sys.executable, WORKER, "serve", "a", str(db), str(tmp_path / "a"), b_url]
        )
        procs.append(a)
        yield f"http://127.0.0.1:{_wait_for(tmp_path / 'a', a)}", db
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


def test_one_trace_across_three_processes(system: tuple[str, Path]) -> None:
    """edge -> a -> b over HTTP: one trace id, every span's parent in the trace, the
    correlation id on the trace, each process named as its own service."""
    url, db = system
    out = subprocess.run(
        [sys.executable, WORKER, "call", "edge", str(db), f"{url}/hop", "order-42"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    trace_id = out.stdout.strip()
    store = TraceStore.from_url(f"sqlite:///{db}")
    deadline = time.monotonic() + 15
    spans = store.trace(trace_id)
    while {s.service for s in spans} != {"edge", "a", "b"} and time.monotonic() < deadline:
        time.sleep(0.2)  # a and b export in batches every 0.5 s
        spans = store.trace(trace_id)
    assert {s.service for s in spans} == {"edge", "a", "b"}
    by_id = {s.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent_id is None]
    assert (root.name, root.service) == ("checkout", "edge")
    for s in spans:
        if s is not root:
            assert s.parent_id in by_id, f"{s.name} ({s.service}) has a parent outside the trace"
    servers = sorted((s.service, s.kind) for s in spans if s.kind == "server")
    assert servers == [("a", "server"), ("b", "server")]
    # b's server span descends from a's server span, which descends from edge's root
    b_server = next(s for s in spans if s.service == "b" and s.kind == "server")
    chain = []
    node = b_server
    while node.parent_id is not None:
        node = by_id[node.parent_id]
        chain.append(node.service)
    assert chain[-1] == "edge"
    assert "a" in chain
    summary = store.summary(trace_id)
    assert summary is not None
    assert summary.correlation_id == "order-42"
    assert summary.root_service == "edge"
    assert set(summary.services) == {"edge", "a", "b"}
    assert [t.trace_id for t in store.traces(correlation_id="order-42")] == [trace_id]


def test_errors_are_kept_when_their_trace_is_not_sampled(tmp_path: Path) -> None:
    """With a 0 % sample, a span that ends in error is still exported; others are not."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, sample_ratio=0.0, set_global=False)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("fine"):
        pass
    with tracer.start_as_current_span("broken") as span:
        span.set_status(Status(StatusCode.ERROR, "boom"))
    provider.force_flush()
    provider.shutdown()
    store = TraceStore.from_url(url)
    assert [t.root_name for t in store.traces()] == ["broken"]
    assert store.traces(errors=True)[0].errors == 1


def test_sampling_ratio_one_keeps_everything(tmp_path: Path) -> None:
    """The default records every trace."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, set_global=False)
    tracer = provider.get_tracer("t")
    for i in range(5):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    provider.shutdown()
    assert TraceStore.from_url(url).count() == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_exports_its_own_spans(tmp_path: Path) -> None:
    """A pre-fork server's workers: set up before fork, each child's spans still land."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, set_global=False)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("parent-before-fork"):
        pass
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with tracer.start_as_current_span("in-child"):
                pass
            code = 0 if provider.force_flush(10_000) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    provider.shutdown()
    names = {t.root_name for t in TraceStore.from_url(url).traces()}
    assert names == {"parent-before-fork", "in-child"}


def test_policy_events_become_span_events(tmp_path: Path) -> None:
    """A retry's scheduled attempts are on the span of the call that retried."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, set_global=False)
    tracer = provider.get_tracer("t")
    failures = iter([OSError("1"), OSError("2")])

    def flaky() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    retry = Retry(2, sleep=lambda _: None, listeners=[SpanEvents()])
    with use_correlation_id("cid-9"), tracer.start_as_current_span("call"):
        assert retry.call(flaky) == "ok"
    provider.shutdown()
    store = TraceStore.from_url(url)
    (summary,) = store.traces()
    (stored,) = store.trace(summary.trace_id)
    names = [e["name"] for e in stored.events]
    assert names == ["interlink.retry.retry_scheduled"] * 2
    assert stored.events[0]["attributes"]["interlink.attempt"] == 1
    assert stored.correlation_id == "cid-9"


def test_span_events_cost_nothing_without_a_span() -> None:
    """No recording span: the listener returns without touching anything."""
    retry = Retry(1, sleep=lambda _: None, listeners=[SpanEvents()])
    calls = iter([OSError("x")])

    def once() -> int:
        error = next(calls, None)
        if error is not None:
            raise error
        return 1

    assert retry.call(once) == 1


def test_unknown_exporter_is_refused(tmp_path: Path) -> None:
    """A typo in the exporter names what is accepted."""
    with pytest.raises(ValueError, match="'exporter' must be sqlite:///PATH, otlp://"):
        setup("svc", "jaeger://x", set_global=False)
    with pytest.raises(ValueError, match="'service_name'"):
        setup("", f"sqlite:///{tmp_path}/t.db", set_global=False)
    with pytest.raises(ValueError, match="'sample_ratio'"):
        setup("svc", f"sqlite:///{tmp_path}/t.db", sample_ratio=2, set_global=False)


def test_log_lines_carry_the_ids(tmp_path: Path) -> None:
    """Inside a request: the correlation id, trace id and span id on the record, as JSON."""
    provider = setup("svc", f"sqlite:///{tmp_path}/t.db", set_global=False)
    tracer = provider.get_tracer("t")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("interlink.test.logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with use_correlation_id("cid-1"), tracer.start_as_current_span("req") as span:
            log.info("charged %s", "order-1", extra={"amount": 12})
            ctx = span.get_span_context()
        log.info("outside")
    finally:
        log.removeHandler(handler)
        provider.shutdown()
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["msg"] == "charged order-1"
    assert inside["correlation_id"] == "cid-1"
    assert inside["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside["span_id"] == f"{ctx.span_id:016x}"
    assert inside["amount"] == 12
    assert "correlation_id" not in outside
    assert "trace_id" not in outside


def test_one_trace_through_outbox_relay_and_consumer(tmp_path: Path) -> None:
    """A request writes an outbox row; the relay publishes it later (no request in sight);
    the consumer's span is still a child of the request's span."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("order", url, set_global=False)
    tracer = provider.get_tracer("t")
    db = str(tmp_path / "orders.db")
    outbox = Outbox()
    conn = sqlite3.connect(db)
    outbox.create_tables(conn)
    with use_correlation_id("cid-outbox"), tracer.start_as_current_span("POST /orders") as root:
        with conn:
            outbox.add(conn, "orders.placed", b"{}", key="o-1")
        request = root.get_span_context()
    conn.close()

    async def relay_and_consume() -> None:
        broker = Broker.from_url(
            f"sqlite:///{tmp_path}/events.db?poll=0.02", tracer_provider=provider
        )
        seen = asyncio.Event()

        @broker.subscriber("orders.placed", group="payment")
        async def handle(event: Envelope) -> None:
            seen.set()

        async with broker:
            async with OutboxRelay(f"sqlite:///{db}", broker) as relay:
                assert await relay.relay_once() == 1
            await asyncio.wait_for(seen.wait(), 20)

    asyncio.run(relay_and_consume())
    provider.shutdown()
    spans = TraceStore.from_url(url).trace(f"{request.trace_id:032x}")
    consumer = [s for s in spans if s.kind == "consumer"]
    assert len(consumer) == 1, [(s.name, s.kind) for s in spans]
    assert consumer[0].parent_id == f"{request.span_id:016x}"
    assert consumer[0].correlation_id == "cid-outbox"


def test_probes_and_scrapes_start_no_trace(tmp_path: Path) -> None:
    """A request for /metrics or /healthz is not traced; /orders is; a probe path under an
    existing trace still is (only new traces are skipped)."""
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, set_global=False)
    tracer = provider.get_tracer("t")
    for path in ("/metrics", "/healthz", "/orders"):
        with tracer.start_as_current_span(f"GET {path}", attributes={"url.path": path}):
            pass
    with (
        tracer.start_as_current_span("batch"),
        tracer.start_as_current_span("GET /healthz", attributes={"url.path": "/healthz"}),
    ):
        pass
    provider.shutdown()
    store = TraceStore.from_url(url)
    assert sorted(t.root_name for t in store.traces()) == ["GET /orders", "batch"]
    (batch,) = [t for t in store.traces() if t.root_name == "batch"]
    assert batch.spans == 2
