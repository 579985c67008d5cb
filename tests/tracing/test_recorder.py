"""``StoreTracerProvider``: the API's tracer without the SDK, its sampling rules, and the export
thread that writes a batch per transaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry

from interlink.tracing import TraceStore, extract, inject, setup
from interlink.tracing.propagation import inject_span
from interlink.tracing.recorder import DROP, EXPORT, RECORD, StoreTracerProvider, decide


def _provider(tmp_path: Path, **options: object) -> tuple[StoreTracerProvider, str]:
    url = f"sqlite:///{tmp_path}/t.db"
    provider = setup("svc", url, set_global=False, **options)  # type: ignore[arg-type]
    assert isinstance(provider, StoreTracerProvider)
    return provider, url


def _parent(sampled: bool) -> SpanContext:
    return SpanContext(7, 9, True, TraceFlags(TraceFlags.SAMPLED if sampled else 0))


def test_decide_follows_the_caller_then_the_ratio() -> None:
    """A caller's flag decides; a new trace is kept when its id's low 64 bits fall under the
    bound; unsampled spans are recorded only with keep_errors; probes start no trace."""
    rules = {"ratio_bound": 1 << 63, "keep_errors": True, "exclude_paths": frozenset({"/m"})}
    assert decide(_parent(True), 7, None, **rules) == EXPORT  # type: ignore[arg-type]
    assert decide(_parent(False), 7, None, **rules) == RECORD  # type: ignore[arg-type]
    assert decide(None, (1 << 63) - 1, None, **rules) == EXPORT  # type: ignore[arg-type]
    assert decide(None, 1 << 63, None, **rules) == RECORD  # type: ignore[arg-type]
    assert decide(None, 1, {"url.path": "/m"}, **rules) == DROP  # type: ignore[arg-type]
    assert decide(_parent(True), 1, {"url.path": "/m"}, **rules) == EXPORT  # type: ignore[arg-type]
    strict = {**rules, "keep_errors": False}
    assert decide(_parent(False), 7, None, **strict) == DROP  # type: ignore[arg-type]
    assert decide(None, 1 << 63, None, **strict) == DROP  # type: ignore[arg-type]


def test_setup_uses_the_light_provider_only_for_the_embedded_store(tmp_path: Path) -> None:
    """sqlite:/// records without the SDK; any other exporter gets the SDK's provider."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    light, _ = _provider(tmp_path)
    sdk = setup("svc", InMemorySpanExporter(), set_global=False)  # type: ignore[arg-type]
    assert isinstance(sdk, TracerProvider)
    light.shutdown()
    sdk.shutdown()


def test_a_trace_is_stored_whole_with_parents_events_and_status(tmp_path: Path) -> None:
    """Nested spans keep their parents; attributes, events, links and an exception land in
    the row; a failed span makes the trace an error."""
    provider, url = _provider(tmp_path)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root", kind=trace.SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/orders/{id}")
        root.set_attribute("tags", ["a", "b"])
        child = tracer.start_span("child")
        child.add_event("step", {"n": 1})
        with pytest.raises(ValueError, match="boom"), child:
            raise ValueError("boom")
    provider.force_flush()
    store = TraceStore.from_url(url)
    (summary,) = store.traces()
    assert (summary.root_name, summary.spans, summary.errors) == ("root", 2, 1)
    spans = {s.name: s for s in store.trace(summary.trace_id)}
    assert spans["child"].parent_id == spans["root"].span_id
    assert spans["root"].kind == "server"
    assert spans["root"].attributes == {"http.route": "/orders/{id}", "tags": ["a", "b"]}
    assert spans["child"].status == "error"
    assert spans["child"].status_message == "ValueError: boom"
    assert [e["name"] for e in spans["child"].events] == ["step", "exception"]
    assert spans["child"].events[1]["attributes"]["exception.type"] == "ValueError"
    provider.shutdown()


def test_ok_is_final_and_unset_is_ignored(tmp_path: Path) -> None:
    """The SDK's status rules: OK cannot be overwritten, UNSET changes nothing."""
    provider, _ = _provider(tmp_path)
    span = provider.get_tracer("t").start_span("s")
    span.set_status(StatusCode.ERROR, "first")
    span.set_status(Status(StatusCode.UNSET))
    assert span.status.status_code is StatusCode.ERROR  # type: ignore[attr-defined]
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR, "late")
    assert span.status.status_code is StatusCode.OK  # type: ignore[attr-defined]
    span.end()
    assert not span.is_recording()
    span.set_attribute("after", 1)
    assert "after" not in span.attributes  # type: ignore[attr-defined]
    provider.shutdown()


def test_context_propagates_through_headers(tmp_path: Path) -> None:
    """inject/extract carry the recorder's span context: a remote child joins the trace."""
    provider, url = _provider(tmp_path)
    tracer = provider.get_tracer("t")
    headers: dict[str, str] = {}
    with tracer.start_as_current_span("caller") as caller:
        inject(headers)
    remote = tracer.start_span("callee", context=extract(headers))  # type: ignore[arg-type]
    remote.end()
    provider.force_flush()
    (stored,) = [s for s in TraceStore.from_url(url).trace(
        f"{caller.get_span_context().trace_id:032x}") if s.name == "callee"]  # fmt: skip
    assert stored.parent_id == f"{caller.get_span_context().span_id:016x}"
    provider.shutdown()


def test_an_error_under_an_unsampled_parent_is_still_kept(tmp_path: Path) -> None:
    """With a 0 % sample, a failing child span is exported on its own; its siblings and
    its parent are not."""
    provider, url = _provider(tmp_path, sample_ratio=0.0)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("request"):
        with tracer.start_as_current_span("fine"):
            pass
        with tracer.start_as_current_span("broken") as span:
            span.set_status(StatusCode.ERROR, "declined")
    provider.shutdown()
    store = TraceStore.from_url(url)
    (summary,) = store.traces()
    assert [s.name for s in store.trace(summary.trace_id)] == ["broken"]


def test_span_processors_see_every_span(tmp_path: Path) -> None:
    """An SDK span processor (``span_metrics``) works on the recorder's spans."""
    from interlink.metrics import span_metrics

    provider, _ = _provider(tmp_path)
    registry = CollectorRegistry()
    provider.add_span_processor(span_metrics(registry))
    span = provider.get_tracer("t").start_span(
        "orders.placed publish",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.destination.name": "orders.placed"},
    )
    span.end()
    provider.shutdown()
    count = registry.get_sample_value(
        "messaging_client_operation_duration_seconds_count",
        {"messaging_destination_name": "orders.placed", "messaging_operation_type": "send"},
    )
    assert count == 1


def test_after_shutdown_nothing_is_recorded(tmp_path: Path) -> None:
    """A span started after shutdown is the API's non-recording span."""
    provider, url = _provider(tmp_path)
    provider.shutdown()
    span = provider.get_tracer("t").start_span("late")
    assert not span.is_recording()
    span.end()
    assert TraceStore.from_url(url).count() == 0


def test_the_export_thread_writes_without_a_flush(tmp_path: Path) -> None:
    """Spans reach the store within the export delay, with no flush asked."""
    import time

    provider, url = _provider(tmp_path)
    for i in range(3):
        provider.get_tracer("t").start_span(f"s{i}").end()
    store = TraceStore.from_url(url)
    deadline = time.monotonic() + 10
    while store.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.count() == 3
    provider.shutdown()


def test_equal_but_differently_typed_attributes_keep_their_types(tmp_path: Path) -> None:
    """Spans of one batch sharing attribute values by equality (1, 1.0, True, "1") each keep
    their own JSON: the writer reuses the text only for the very same str and int values."""
    provider, url = _provider(tmp_path)
    tracer = provider.get_tracer("t")
    values: list[object] = [1, 1.0, True, "1", 1]
    for i, value in enumerate(values):
        tracer.start_span(f"s{i}", attributes={"v": value}).end()  # type: ignore[dict-item]
    provider.force_flush()
    store = TraceStore.from_url(url)
    got = {s.name: s.attributes["v"] for t in store.traces() for s in store.trace(t.trace_id)}
    assert [(got[f"s{i}"], type(got[f"s{i}"])) for i in range(5)] == [
        (1, int), (1.0, float), (True, bool), ("1", str), (1, int)
    ]  # fmt: skip
    provider.shutdown()


def test_the_context_is_reached_by_the_variable_the_api_uses() -> None:
    """The current context's variable and the current span's key are found through the
    public API, so a span is made current by the variable's own C calls."""
    from opentelemetry import context

    from interlink.tracing.propagation import context_access

    get, attach, detach, key = context_access(context, trace)
    assert key is not None
    assert get() is context.get_current()
    probe = trace.NonRecordingSpan(SpanContext(5, 6, False))
    token = attach(context.Context({key: probe}))
    assert trace.get_current_span() is probe
    detach(token)
    assert trace.get_current_span() is not probe


@pytest.mark.parametrize("portable", [False, True], ids=["context-variable", "api-functions"])
def test_spans_nest_and_restore_the_context_either_way(tmp_path: Path, portable: bool) -> None:
    """Whether the tracer reaches the context through its variable or through the API's
    functions (the fallback), interlink's spans and the API's nest under each other, a client
    span is a child of the current one, and the context is restored after each block."""
    from opentelemetry import context

    from interlink.context import use_correlation_id
    from interlink.tracing import Spans
    from interlink.tracing.propagation import context_access
    from interlink.tracing.recorder import _Tracer

    provider, url = _provider(tmp_path)
    if portable:
        access = (context.get_current, context.attach, context.detach, None)
        provider._tracer = _Tracer(provider, access)
    else:
        provider._tracer = _Tracer(provider, context_access(context, trace))
    spans = Spans(provider)
    before = context.get_current()
    with use_correlation_id("c-1"), spans.server("GET /a", attributes={"url.path": "/a"}) as a:
        assert trace.get_current_span() is a
        with provider.get_tracer("t").start_as_current_span("work") as work:
            assert trace.get_current_span() is work
            client = spans.start_client("GET", {"url.full": "http://b/"})
            carrier: dict[str, str] = {}
            inject_span(carrier, client)
            client.end()
        assert trace.get_current_span() is a
    assert context.get_current() is before
    provider.force_flush()
    store = TraceStore.from_url(url)
    (summary,) = store.traces()
    by_name = {s.name: s for s in store.trace(summary.trace_id)}
    assert by_name["work"].parent_id == by_name["GET /a"].span_id
    assert by_name["GET"].parent_id == by_name["work"].span_id
    assert carrier["traceparent"] == f"00-{summary.trace_id}-{by_name['GET'].span_id}-01"
    assert by_name["GET /a"].correlation_id == "c-1"
    assert by_name["GET"].attributes == {"url.full": "http://b/", "interlink.correlation_id": "c-1"}
    provider.shutdown()


def test_span_contexts_of_another_layout_are_built_and_read_through_the_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ``SpanContext`` is not the plain tuple of its fields (not promised by the API),
    the recorder and the propagation build and read it through its constructor and
    properties: an incoming ``traceparent`` is still joined, children still nest under it,
    and what is injected names the right span."""
    import dataclasses
    import types

    from interlink.tracing import Spans, propagation, recorder
    from interlink.tracing.propagation import _tuple_context, inject_span

    class Attributes:
        def __init__(self, *fields: object) -> None:
            self.fields = fields

    shaped = types.SimpleNamespace(
        TraceFlags=trace.TraceFlags, TraceState=trace.TraceState, SpanContext=Attributes
    )
    assert _tuple_context(shaped) is False  # not a tuple at all: no error, the API's way
    assert _tuple_context(trace) is True  # today's API: the shortcut is used
    otel = propagation.api()
    assert otel is not None
    portable = dataclasses.replace(otel, tuple_context=False)
    monkeypatch.setattr(propagation, "api", lambda: portable)
    monkeypatch.setattr(recorder, "_TUPLE_CONTEXT", False)
    provider, url = _provider(tmp_path)
    spans = Spans(provider)
    caller = f"00-{'ab' * 16}-{'cd' * 8}-01"
    incoming = extract({"traceparent": caller})
    assert incoming is not None
    with spans.server("GET /a", parent=incoming, attributes={"url.path": "/a"}) as server:
        client = spans.start_client("GET", {"url.full": "http://b/"})
        carrier: dict[str, str] = {}
        inject_span(carrier, client)
        client.end()
    assert server.get_span_context().trace_id == int("ab" * 16, 16)
    provider.force_flush()
    store = TraceStore.from_url(url)
    by_name = {s.name: s for s in store.trace("ab" * 16)}
    assert by_name["GET /a"].parent_id == "cd" * 8
    assert by_name["GET"].parent_id == by_name["GET /a"].span_id
    assert carrier["traceparent"] == f"00-{'ab' * 16}-{by_name['GET'].span_id}-01"
    provider.shutdown()


def test_the_writer_process_ends_quietly_on_a_batch_cut_short(tmp_path: Path) -> None:
    """A service killed while sending a batch leaves the writer a cut-short batch and a
    closed pipe: the writer stores nothing of it and exits cleanly, no traceback."""
    import json
    import subprocess
    import sys

    settings = {
        "path": str(tmp_path / "t.db"),
        "busy_timeout": 5.0,
        "service": "svc",
        "every": 100,
        "max_age": None,
        "max_traces": None,
    }
    writer = subprocess.run(
        [sys.executable, "-m", "interlink.tracing.recorder", json.dumps(settings)],
        input=(1000).to_bytes(4, "big") + b"\x00" * 10,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert writer.returncode == 0
    assert writer.stderr == b""
    assert TraceStore.from_url(f"sqlite:///{tmp_path}/t.db").traces() == []
