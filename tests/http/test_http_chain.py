"""A -> B -> C over real HTTP: the deadline shrinks at every hop, the correlation id and the
trace id are the same at C as at A, and an expired request is refused at B without calling C."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from http_support import send_json, serve
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interlink import remaining
from interlink.context import correlation_id
from interlink.http import AsyncClient, InterlinkMiddleware, ServicePolicies

POLICIES = ServicePolicies(timeout=5.0, retries=0)


@dataclass
class Hop:
    """One service of the chain: answers with what it saw, after calling ``next_url`` if set."""

    name: str
    provider: TracerProvider
    next_url: str | None = None
    delay: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        span = trace.get_current_span().get_span_context()
        seen = {
            "correlation_id": correlation_id(),
            "remaining": remaining(),
            "trace_id": span.trace_id,
            "baggage": dict(baggage.get_all()),
        }
        self.seen.append(seen)
        downstream = None
        if self.next_url is not None:
            await asyncio.sleep(self.delay)
            async with AsyncClient(policies=POLICIES, tracer_provider=self.provider) as client:
                r = await client.get(self.next_url + "/")
                downstream = {"status": r.status, "body": r.json()}
        await send_json(send, 200, {**seen, "downstream": downstream})


@dataclass
class Chain:
    a: Hop
    b: Hop
    c: Hop
    url_a: str
    url_b: str
    exporter: InMemorySpanExporter


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    c = Hop("c", provider)
    b = Hop("b", provider)
    a = Hop("a", provider)
    with serve(InterlinkMiddleware(c, tracer_provider=provider)) as url_c:
        b.next_url = url_c
        with serve(InterlinkMiddleware(b, tracer_provider=provider)) as url_b:
            a.next_url = url_b
            with serve(InterlinkMiddleware(a, tracer_provider=provider)) as url_a:
                yield Chain(a, b, c, url_a, url_b, exporter)
    provider.shutdown()


def test_deadline_correlation_id_and_trace_travel_the_chain(chain: Chain) -> None:
    """C sees A's correlation id and trace id, and less time than B, which saw less than A."""
    for hop in (chain.a, chain.b, chain.c):
        hop.seen.clear()
    r = httpx.get(chain.url_a, headers={"x-request-id": "chain-1", "x-request-timeout-ms": "2000"})
    assert r.status_code == 200
    a, b, c = chain.a.seen[0], chain.b.seen[0], chain.c.seen[0]
    assert a["correlation_id"] == b["correlation_id"] == c["correlation_id"] == "chain-1"
    assert r.headers["x-request-id"] == "chain-1"
    assert 2.0 >= a["remaining"] > b["remaining"] > c["remaining"] > 0
    assert a["trace_id"] != 0
    assert a["trace_id"] == b["trace_id"] == c["trace_id"]


def _spans_started_since(
    exporter: InMemorySpanExporter, start_ns: int, count: int, within: float = 2.0
) -> list[ReadableSpan]:
    """The finished spans started at or after ``start_ns``, as soon as there are ``count``
    (or ``within`` seconds have passed). A server's span ends after it has sent its response,
    so the caller can have the answer before that server's span (or the one of a server
    further down) is finished; and a previous test's outer span can finish after ours began."""
    deadline = time.monotonic() + within
    while True:
        spans = [s for s in exporter.get_finished_spans() if (s.start_time or 0) >= start_ns]
        if len(spans) >= count or time.monotonic() >= deadline:
            return spans
        time.sleep(0.002)


def test_spans_form_one_trace_server_client_server(chain: Chain) -> None:
    """Each hop records a SERVER span, each call a CLIENT span, parented across processes."""
    chain.exporter.clear()
    start_ns = time.time_ns()  # the SDK's span clock
    r = httpx.get(chain.url_a, headers={"x-request-timeout-ms": "2000"})
    assert r.status_code == 200
    spans = _spans_started_since(chain.exporter, start_ns, 5)
    kinds = sorted(s.kind.name for s in spans)
    assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER", "SERVER"]
    assert len({s.context.trace_id for s in spans}) == 1
    by_id = {s.context.span_id: s for s in spans}
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1
    assert roots[0].kind is trace.SpanKind.SERVER
    for s in spans:
        if s.parent is not None:
            parent = by_id[s.parent.span_id]
            assert parent.kind is not s.kind  # server -> client -> server -> ...
    client = next(s for s in spans if s.kind is trace.SpanKind.CLIENT)
    assert client.attributes is not None
    assert client.attributes["http.response.status_code"] == 200


def test_incoming_trace_context_and_baggage_are_continued(chain: Chain) -> None:
    """A caller's traceparent and baggage reach C unchanged in trace id and content."""
    for hop in (chain.a, chain.b, chain.c):
        hop.seen.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = httpx.get(
        chain.url_a,
        headers={
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
            "baggage": "tenant=acme",
        },
    )
    assert r.status_code == 200
    assert f"{chain.c.seen[0]['trace_id']:032x}" == trace_id
    assert chain.c.seen[0]["baggage"] == {"tenant": "acme"}


def test_expired_request_is_refused_at_b_without_calling_c(chain: Chain) -> None:
    """B answers 504 to a request with no time left, and C is never called."""
    calls_b, calls_c = len(chain.b.seen), len(chain.c.seen)
    r = httpx.get(chain.url_b, headers={"x-request-timeout-ms": "0", "x-request-id": "late"})
    assert r.status_code == 504
    assert r.json()["correlation_id"] == "late"
    assert len(chain.b.seen) == calls_b
    assert len(chain.c.seen) == calls_c


def test_a_deadline_spent_at_a_never_reaches_b(chain: Chain) -> None:
    """A spends its 30 ms before calling B: its call is not sent and A answers 504."""
    chain.a.delay = 0.05
    calls_b = len(chain.b.seen)
    try:
        r = httpx.get(chain.url_a, headers={"x-request-timeout-ms": "30"})
    finally:
        chain.a.delay = 0.0
    assert r.status_code == 504
    assert len(chain.b.seen) == calls_b


def test_no_sdk_means_no_trace_headers(chain: Chain) -> None:
    """Without an SDK and without an incoming trace, nothing trace-related is sent."""
    from interlink.tracing import inject

    carrier: dict[str, str] = {}
    token = context.attach(context.Context())
    try:
        inject(carrier)
    finally:
        context.detach(token)
    assert carrier == {}
