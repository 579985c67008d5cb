"""Trace context for every transport, through the OpenTelemetry API.

``inject``/``extract`` move W3C ``traceparent``, ``tracestate`` and ``baggage`` between the
current context and a header mapping (HTTP headers, gRPC metadata, message headers);
``Spans`` opens server and client spans when an OpenTelemetry SDK is configured. Without
``opentelemetry-api`` installed, or with the API but no SDK, every helper is a near-free no-op:
tracing must cost nothing to the services that do not use it. The API is imported on first
use, never by ``import interlink``.
"""

from interlink.tracing.propagation import TRACE_HEADERS, extract, inject, use_context
from interlink.tracing.spans import Spans

__all__ = ["TRACE_HEADERS", "Spans", "extract", "inject", "use_context"]
