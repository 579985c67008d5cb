"""Trace context propagation and spans over the OpenTelemetry API, and their no-op modes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interlink.tracing import Spans, extract, inject, use_context
from interlink.tracing import propagation as prop
from interlink.tracing.spans import context_of, fail

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def sdk() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def empty_context() -> Iterator[None]:
    token = context.attach(context.Context())
    yield
    context.detach(token)


def test_inject_writes_nothing_without_a_span_or_baggage(empty_context: None) -> None:
    """The common case: no trace, no headers."""
    carrier: dict[str, str] = {}
    inject(carrier)
    assert carrier == {}


def test_extract_without_trace_headers_is_none() -> None:
    """No traceparent, tracestate or baggage: nothing to continue."""
    assert extract({"x-request-id": "a"}) is None


def test_extract_then_inject_passes_the_trace_on_without_an_sdk(empty_context: None) -> None:
    """With the API alone an incoming trace is forwarded: same trace id, same parent."""
    ctx = extract({"traceparent": TRACEPARENT, "baggage": "k=v"})
    assert ctx is not None
    carrier: dict[str, str] = {}
    with use_context(ctx):
        inject(carrier)
        assert baggage.get_baggage("k") == "v"
    assert carrier["traceparent"] == TRACEPARENT
    assert carrier["baggage"] == "k=v"


def test_use_context_none_changes_nothing() -> None:
    """``use_context(None)`` is a no-op block."""
    before = context.get_current()
    with use_context(None):
        assert context.get_current() == before


def test_server_span_continues_the_callers_trace(
    sdk: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A SERVER span is a child of the extracted context and is current in the block."""
    provider, exporter = sdk
    spans = Spans(provider)
    assert spans.enabled
    parent = extract({"traceparent": TRACEPARENT})
    with spans.server("GET /x", parent=parent, attributes={"a": 1}) as span:
        assert span is not None
        assert trace.get_current_span() is span
    (finished,) = exporter.get_finished_spans()
    assert finished.kind is trace.SpanKind.SERVER
    assert f"{finished.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == TRACEPARENT.split("-")[2]


def test_client_span_is_what_gets_injected(
    sdk: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """The traceparent sent names the client span, child of the current server span."""
    provider, exporter = sdk
    spans = Spans(provider)
    with spans.server("GET /x"):
        span = spans.start_client("GET", {"url.full": "http://x/"})
        carrier: dict[str, str] = {}
        inject(carrier, context_of(span))
        span.end()
    client_span, server_span = exporter.get_finished_spans()
    assert server_span.name == "GET /x"
    assert carrier["traceparent"].split("-")[2] == f"{client_span.context.span_id:016x}"
    assert client_span.parent is not None
    assert client_span.parent.span_id == server_span.context.span_id


def test_errors_mark_spans_failed(sdk: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """An exception escaping a span block, or ``fail``, sets the ERROR status."""
    provider, exporter = sdk
    spans = Spans(provider)
    with pytest.raises(RuntimeError), spans.client("GET"):
        raise RuntimeError("boom")
    with spans.server("GET") as span:
        fail(span, "HTTP 503")
    first, second = exporter.get_finished_spans()
    assert first.status.status_code is trace.StatusCode.ERROR
    assert first.events[0].name == "exception"
    assert second.status.description == "HTTP 503"


def test_no_sdk_means_no_spans(monkeypatch: pytest.MonkeyPatch, empty_context: None) -> None:
    """With no provider configured, nothing is started, and the parent still becomes current."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    spans = Spans()
    assert spans.tracer() is None
    assert spans.start_client("GET") is None
    parent = extract({"traceparent": TRACEPARENT})
    with spans.server("GET", parent=parent) as span:
        assert span is None
        assert trace.get_current_span().get_span_context().trace_id == int(
            TRACEPARENT.split("-")[1], 16
        )
    with spans.client("GET") as span:
        assert span is None


def test_a_noop_provider_means_no_spans() -> None:
    """An explicit no-op provider records nothing either."""
    assert Spans(trace.NoOpTracerProvider()).tracer() is None


def test_an_sdk_configured_later_is_picked_up(
    monkeypatch: pytest.MonkeyPatch, sdk: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """The global provider is read on use, so an SDK set after construction records."""
    provider, _ = sdk
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    spans = Spans()
    assert spans.tracer() is None
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    assert spans.tracer() is not None
    assert spans.tracer() is spans.tracer()  # cached per provider


def test_without_the_api_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """With opentelemetry not importable, inject/extract/spans do nothing and do not fail."""
    prop.api.cache_clear()
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    try:
        carrier: dict[str, str] = {}
        inject(carrier)
        assert carrier == {}
        assert extract({"traceparent": TRACEPARENT}) is None
        assert Spans().tracer() is None
        with use_context(object()):
            pass
    finally:
        monkeypatch.undo()
        prop.api.cache_clear()
    assert prop.api() is not None


@pytest.mark.parametrize(
    "traceparent",
    [
        TRACEPARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        f" {TRACEPARENT}\t",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        f"{TRACEPARENT}-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ],
)
def test_a_lone_traceparent_reads_as_the_apis_propagator_reads_it(traceparent: str) -> None:
    """The shortcut for a lone traceparent accepts and rejects what the API's propagator does."""
    from opentelemetry import propagate

    expected = propagate.extract({"traceparent": traceparent})
    got = extract({"traceparent": traceparent})
    want = trace.get_current_span(expected).get_span_context() if expected else None
    have = trace.get_current_span(got).get_span_context() if got is not None else None  # type: ignore[arg-type]
    assert have == want


def test_inject_span_writes_what_the_apis_propagator_writes(
    sdk: tuple[TracerProvider, InMemorySpanExporter], empty_context: None
) -> None:
    """A span's traceparent and tracestate, formatted without the propagator chain, are the
    API's; with baggage current the propagator writes it too."""
    from opentelemetry import propagate
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    provider, _ = sdk
    parent = SpanContext(7, 9, True, TraceFlags(1), TraceState([("vendor", "x")]))
    span = provider.get_tracer("t").start_span(
        "s", context=trace.set_span_in_context(trace.NonRecordingSpan(parent))
    )
    for current in (context.Context(), baggage.set_baggage("k", "v")):
        token = context.attach(current)
        try:
            carrier: dict[str, str] = {}
            prop.inject_span(carrier, span)
            expected: dict[str, str] = {}
            propagate.inject(expected, context=trace.set_span_in_context(span))
        finally:
            context.detach(token)
        assert carrier == expected
        assert carrier["tracestate"] == "vendor=x"
    assert "baggage" in carrier
    span.end()


def test_another_propagator_is_always_asked(empty_context: None) -> None:
    """With a propagator other than the default pair, extract and inject go through it."""
    from opentelemetry import propagate
    from opentelemetry.propagators.textmap import TextMapPropagator

    class Custom(TextMapPropagator):
        def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def, override]
            return baggage.set_baggage("seen", "yes")

        def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def, override]
            carrier["custom"] = "1"

        @property
        def fields(self) -> set[str]:
            return {"custom"}

    default = propagate.get_global_textmap()
    propagate.set_global_textmap(Custom())
    try:
        got = extract({"traceparent": TRACEPARENT})
        carrier: dict[str, str] = {}
        prop.inject_span(carrier, trace.NonRecordingSpan(trace.SpanContext(7, 9, False)))
    finally:
        propagate.set_global_textmap(default)
    assert baggage.get_baggage("seen", got) == "yes"  # type: ignore[arg-type]
    assert carrier == {"custom": "1"}
    assert extract({"traceparent": TRACEPARENT}) is not None  # the default pair again
