"""Distributed tracing: W3C trace context on every transport, and the SDK set up in one call.

``inject``/``extract`` move W3C ``traceparent``, ``tracestate`` and ``baggage`` between the
current context and a header mapping (HTTP headers, gRPC metadata, message headers);
``Spans`` opens server and client spans when an OpenTelemetry SDK is configured. Without
``opentelemetry-api`` installed, or with the API but no SDK, every helper is a near-free no-op:
tracing must cost nothing to the services that do not use it. The API is imported on first
use, never by ``import interlink``.

``setup(service_name, exporter=...)`` configures the SDK (OTLP, console, or the embedded
``TraceStore`` in a SQLite file); ``SpanEvents`` records policy events on the current span;
``CorrelationFilter``/``JsonFormatter`` put the correlation and trace ids on every log line.
"""

from interlink.tracing.logs import CorrelationFilter, JsonFormatter
from interlink.tracing.propagation import TRACE_HEADERS, extract, inject, use_context
from interlink.tracing.setup import SpanEvents, StoreExporter, setup
from interlink.tracing.spans import CORRELATION_ATTRIBUTE, Spans
from interlink.tracing.store import SpanRecord, TraceStore, TraceSummary

__all__ = [
    "CORRELATION_ATTRIBUTE",
    "TRACE_HEADERS",
    "CorrelationFilter",
    "JsonFormatter",
    "SpanEvents",
    "SpanRecord",
    "Spans",
    "StoreExporter",
    "TraceStore",
    "TraceSummary",
    "extract",
    "inject",
    "setup",
    "use_context",
]
