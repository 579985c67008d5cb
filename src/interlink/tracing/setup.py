"""Turn tracing on for one process: a tracer provider, an exporter, a sampler, and the glue.

interlink's transports already propagate W3C trace context and open spans whenever a tracer
provider is configured; ``setup`` is the one call that configures it, so a service gets whole
traces across HTTP, gRPC and its broker without learning OpenTelemetry:

- the exporter is chosen by a string: ``sqlite:///traces.db`` (the embedded store, no collector
  needed), ``otlp://host:4317`` or ``otlp+grpc://`` (OTLP over gRPC), ``otlp+http://host:4318``
  (OTLP over HTTP), ``console``, or any SDK ``SpanExporter`` object;
- the embedded store records through ``StoreTracerProvider`` (``interlink.tracing.recorder``:
  the OpenTelemetry API without the SDK's per-span cost, rows written by a background thread);
  every other exporter through the SDK's provider and batch processor: export never blocks a
  request;
- the sampler is parent-based with a ratio for new traces, and spans that end in error are kept
  even when their trace was not sampled (``keep_errors``): head sampling cannot know in advance
  which requests fail, so unsampled traces are recorded cheaply and only their failed spans are
  exported;
- after ``os.fork()`` the child gets its own export thread and its own store connection, so
  pre-fork servers work.

``SpanEvents`` is a policy listener that writes policy events (retry scheduled, breaker rejection,
fallback used, hedge launched, budget refusal, ...) onto the current span.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from interlink.context import CORRELATION
from interlink.resilience.events import PolicyEvent
from interlink.tracing.spans import CORRELATION_ATTRIBUTE
from interlink.tracing.store import Record, TraceStore

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from interlink.tracing.recorder import StoreTracerProvider

__all__ = ["EXCLUDED_PATHS", "SpanEvents", "StoreExporter", "setup", "to_record"]

#: Request paths that start no trace by default: probes and metrics scrapes.
EXCLUDED_PATHS = ("/healthz", "/readyz", "/livez", "/metrics")

_INSTALL_HINT = "tracing needs the OpenTelemetry SDK: pip install 'interlink[otel]'"


def _sdk() -> Any:
    try:
        from opentelemetry.sdk import trace as sdk_trace
    except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
        raise ImportError(_INSTALL_HINT) from exc
    return sdk_trace


def setup(
    service_name: str,
    exporter: str | SpanExporter | None = None,
    *,
    sample_ratio: float = 1.0,
    keep_errors: bool = True,
    resource: Mapping[str, str] | None = None,
    set_global: bool = True,
    retention_age: float | None = 7 * 24 * 3600.0,
    retention_traces: int | None = 100_000,
    exclude_paths: Iterable[str] = EXCLUDED_PATHS,
) -> StoreTracerProvider | TracerProvider:
    """Turn tracing on for ``service_name`` and return the tracer provider.

    ``exporter`` defaults to ``$INTERLINK_TRACES``, then to OTLP when
    ``$OTEL_EXPORTER_OTLP_ENDPOINT`` is set, then to ``sqlite:///.interlink/traces.db``. The
    embedded store (``sqlite:///``) records through interlink's light ``StoreTracerProvider``;
    every other exporter through the OpenTelemetry SDK's ``TracerProvider`` and batch processor.
    Both have ``get_tracer``, ``add_span_processor``, ``force_flush`` and ``shutdown``.
    ``sample_ratio`` is the share of new traces recorded (a caller's sampling decision is
    followed). ``retention_*`` bound the embedded store. With ``set_global`` the provider becomes
    the process-wide one, which is what interlink's transports use. Requests for
    ``exclude_paths`` (probes and metric scrapes, by default) start no trace.
    """
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(f"'service_name' must be a non-empty string: {service_name!r}")
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"'sample_ratio' must be in [0, 1]: {sample_ratio!r}")
    sdk_trace = _sdk()
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource

    attributes = {"service.name": service_name, "telemetry.sdk.name": "opentelemetry"}
    attributes.update(resource or {})
    chosen = _chosen(exporter)
    provider: StoreTracerProvider | TracerProvider
    if isinstance(chosen, str) and urlsplit(chosen).scheme == "sqlite":
        from interlink.tracing.recorder import StoreTracerProvider

        provider = StoreTracerProvider(
            TraceStore.from_url(chosen),
            resource=Resource.create(attributes),
            sample_ratio=sample_ratio,
            keep_errors=keep_errors,
            exclude_paths=frozenset(exclude_paths),
            retention_age=retention_age,
            retention_traces=retention_traces,
        )
    else:
        provider = _sdk_provider(
            sdk_trace,
            Resource.create(attributes),
            _exporter(chosen, service_name),
            sample_ratio=sample_ratio,
            keep_errors=keep_errors,
            exclude_paths=frozenset(exclude_paths),
        )
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _sdk_provider(
    sdk_trace: Any,
    resource: Any,
    span_exporter: SpanExporter,
    *,
    sample_ratio: float,
    keep_errors: bool,
    exclude_paths: frozenset[str],
) -> TracerProvider:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = sdk_trace.TracerProvider(
        resource=resource,
        sampler=_skipping(_sampler(sample_ratio, keep_errors), exclude_paths),
    )
    # a queue deep enough for a burst of a few seconds: the SDK drops what does not fit
    batch = BatchSpanProcessor(
        span_exporter, schedule_delay_millis=500, max_queue_size=16_384, max_export_batch_size=2048
    )
    if keep_errors and sample_ratio < 1.0:
        provider.add_span_processor(_keep_errors(batch, span_exporter))
    else:
        provider.add_span_processor(batch)
    return provider  # type: ignore[no-any-return]


def _skipping(inner: Any, paths: frozenset[str]) -> Any:
    """``inner``, except that a new trace for a request to one of ``paths`` is dropped: a
    health probe or a metrics scrape every second would bury the traces worth reading."""
    if not paths:
        return inner
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class SkipPaths(Sampler):
        def should_sample(  # noqa: PLR0917 - the SDK calls it positionally
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if attributes and attributes.get("url.path") in paths:
                parent = get_current_span(parent_context).get_span_context()
                if not parent.is_valid:
                    return SamplingResult(Decision.DROP)
            return inner.should_sample(  # type: ignore[no-any-return]
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return f"SkipPaths({sorted(paths)}, {inner.get_description()})"

    return SkipPaths()


def _sampler(ratio: float, keep_errors: bool) -> Any:
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    if ratio >= 1.0 or not keep_errors:
        return ParentBased(TraceIdRatioBased(ratio))

    class RecordUnsampled(Sampler):
        """Ratio sampling that still records (not exports) the traces it does not sample, so
        that a span ending in error can be exported on its own."""

        def __init__(self) -> None:
            self._ratio = TraceIdRatioBased(ratio)

        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            result = self._ratio.should_sample(*args, **kwargs)
            if result.decision is Decision.DROP:
                return SamplingResult(Decision.RECORD_ONLY, result.attributes)
            return result

        def get_description(self) -> str:
            return f"RecordUnsampled({ratio})"

    return ParentBased(RecordUnsampled())


def _keep_errors(inner: Any, exporter: SpanExporter) -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class KeepErrors(SpanProcessor):
        """Passes sampled spans to the batch processor, and unsampled ones only when they failed.

        Failed spans of unsampled traces are queued and exported by a thread of this processor's
        own (started on first use, and again in a forked child), never on the request's path.
        """

        def __init__(self, inner: Any, exporter: SpanExporter) -> None:
            self._inner = inner
            self._exporter = exporter
            self._queue: list[ReadableSpan] = []
            self._wake = threading.Condition()
            self._thread: threading.Thread | None = None
            self._closed = False

        def on_start(self, span: Any, parent_context: Any = None) -> None:
            self._inner.on_start(span, parent_context=parent_context)

        def on_end(self, span: ReadableSpan) -> None:
            from opentelemetry.trace import StatusCode

            if span.context is not None and span.context.trace_flags.sampled:
                self._inner.on_end(span)
            elif span.status.status_code is StatusCode.ERROR and not self._closed:
                with self._wake:
                    self._queue.append(span)
                    if self._thread is None or not self._thread.is_alive():
                        self._thread = threading.Thread(
                            target=self._run, name="interlink-error-spans", daemon=True
                        )
                        self._thread.start()
                    self._wake.notify()

        def _run(self) -> None:
            while True:
                with self._wake:
                    while not self._queue and not self._closed:
                        self._wake.wait(0.5)
                    batch, self._queue = self._queue, []
                    if not batch and self._closed:
                        return
                if batch:
                    self._exporter.export(batch)

        def shutdown(self) -> None:
            with self._wake:
                self._closed = True
                self._wake.notify()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            with self._wake:
                batch, self._queue = self._queue, []
            if batch:
                self._exporter.export(batch)
            return bool(self._inner.force_flush(timeout_millis))

    return KeepErrors(inner, exporter)


def _chosen(exporter: str | SpanExporter | None) -> str | SpanExporter:
    if exporter is None:
        exporter = os.environ.get("INTERLINK_TRACES") or (
            "otlp+grpc://env" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else None
        )
        if exporter is None:
            exporter = "sqlite:///.interlink/traces.db"
    return exporter


def _exporter(exporter: str | SpanExporter, service: str) -> SpanExporter:
    if not isinstance(exporter, str):
        return exporter
    scheme = urlsplit(exporter).scheme
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=service)
    if scheme in ("otlp", "otlp+grpc", "otlp+http"):
        return _otlp(exporter, scheme)
    raise ValueError(
        "'exporter' must be sqlite:///PATH, otlp://HOST:PORT, otlp+grpc://, otlp+http://, "
        f"console, or a SpanExporter: {exporter!r}"
    )


def _otlp(url: str, scheme: str) -> SpanExporter:
    parts = urlsplit(url)
    # "env" as the host means: take the endpoint from the standard OTEL_* variables
    endpoint = None if parts.netloc in ("", "env") else parts.netloc
    try:
        if scheme == "otlp+http":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            target = None if endpoint is None else f"http://{endpoint}{parts.path or '/v1/traces'}"
            return OTLPSpanExporter(endpoint=target)
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
    except ImportError as exc:
        raise ImportError(
            "OTLP export needs the OTLP exporter: pip install 'interlink[otlp]'"
        ) from exc
    return GrpcExporter(endpoint=endpoint, insecure=True)


class StoreExporter:
    """An SDK ``SpanExporter`` writing into a ``TraceStore`` (the embedded, collector-free path).

    Every ``prune_every`` exports it applies the retention limits. After ``fork()`` the child
    reopens the store, so a forked worker never writes through its parent's SQLite handle.
    """

    def __init__(
        self,
        store: TraceStore,
        *,
        retention_age: float | None = 7 * 24 * 3600.0,
        retention_traces: int | None = 100_000,
        prune_every: int = 200,
    ) -> None:
        self.store = store
        self._retention_age = retention_age
        self._retention_traces = retention_traces
        self._prune_every = prune_every
        self._exports = 0
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=store.reopen)

    def export(self, spans: Sequence[ReadableSpan]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            by_service: dict[str, list[Record]] = {}
            for s in spans:
                resource = s.resource.attributes if s.resource is not None else {}
                service = str(resource.get("service.name", "unknown"))
                by_service.setdefault(service, []).append(to_record(s))
            for service, records in by_service.items():
                self.store.add_records(records, service)
        except Exception:  # a locked or full disk must not kill the export thread
            import logging

            logging.getLogger("interlink.tracing").exception("trace store write failed")
            return SpanExportResult.FAILURE
        with self._lock:
            self._exports += 1
            due = self._exports % self._prune_every == 0
        if due and (self._retention_age is not None or self._retention_traces is not None):
            self.store.prune(max_age=self._retention_age, max_traces=self._retention_traces)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to flush: every export is committed when ``export`` returns."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Always flushed (see ``shutdown``)."""
        return True


_KINDS = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}
_STATUSES = {0: "unset", 1: "ok", 2: "error"}


def to_record(span: ReadableSpan) -> Record:
    """The plain values of an SDK span, as the store takes them (its service aside)."""
    ctx = span.context
    assert ctx is not None  # an ended SDK span always has its context
    parent = span.parent
    status = span.status
    start = span.start_time or 0
    return (
        ctx.trace_id,
        ctx.span_id,
        None if parent is None else parent.span_id,
        span.name,
        _KINDS.get(span.kind.value, "internal"),
        start,
        span.end_time or start,
        _STATUSES.get(status.status_code.value, "unset"),
        status.description,
        dict(span.attributes) if span.attributes else {},
        tuple((e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
        tuple((k.context.trace_id, k.context.span_id) for k in span.links),
    )


class SpanEvents:
    """A policy listener that records every policy event on the current span.

    Pass it with a policy's or a client's ``listeners=``. Each event becomes a span event named
    ``interlink.<kind>.<event>`` (``interlink.retry.retry_scheduled``) carrying the policy's name
    and the event's fields; when no span is recording it costs one context look-up.
    """

    __slots__ = ()

    def __call__(self, event: PolicyEvent, /) -> None:
        from opentelemetry import trace

        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, str | int | float | bool] = {"interlink.policy": event.name}
        for f in fields(event):
            if f.name in ("kind", "name", "at"):
                continue
            value = getattr(event, f.name)
            if isinstance(value, str | int | float | bool):
                attributes[f"interlink.{f.name}"] = value
        span.add_event(f"interlink.{event.kind}.{_snake(type(event).__name__)}", attributes)
        if CORRELATION.get() is not None:
            span.set_attribute(CORRELATION_ATTRIBUTE, CORRELATION.get())


def _snake(name: str) -> str:
    out = [name[0].lower()]
    for ch in name[1:]:
        out.append(f"_{ch.lower()}" if ch.isupper() else ch)
    return "".join(out)
