"""Trace context across a broker, through ``interlink.tracing`` (OpenTelemetry API, no SDK
needed).

The publisher injects its current trace context into the envelope's headers (inside a PRODUCER
span ``<topic> publish`` when an SDK records); the consumer extracts it and runs the handler in
it (inside a CONSUMER span ``<topic> process``, child of the publisher's span). Without the API,
or with nothing to propagate, both cost a cached lookup.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

from interlink.tracing.propagation import api, extract, inject
from interlink.tracing.spans import Spans, context_of, ending, with_correlation

__all__ = ["consume_span", "publish_span"]


def _attributes(topic: str, operation: str) -> dict[str, str]:
    return {
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.system": "interlink",
    }


@contextmanager
def publish_span(spans: Spans, topic: str, headers: MutableMapping[str, str]) -> Iterator[None]:
    """Inject the trace context into ``headers`` for the block (a PRODUCER span if recording)."""
    tracer = spans.tracer()
    otel = api()
    if tracer is None or otel is None:
        inject(headers)
        yield
        return
    span = tracer.start_span(
        f"{topic} publish",
        kind=otel.trace.SpanKind.PRODUCER,
        attributes=with_correlation(_attributes(topic, "send")),
    )
    inject(headers, context_of(span))
    with ending(span):
        yield


@contextmanager
def consume_span(
    spans: Spans, topic: str, group: str, headers: Mapping[str, str]
) -> Iterator[None]:
    """Run the block in the publisher's trace (in a CONSUMER span if recording)."""
    attributes = _attributes(topic, "process") | {"messaging.consumer.group.name": group}
    with spans.current(
        f"{topic} process", kind="consumer", parent=extract(headers), attributes=attributes
    ):
        yield
