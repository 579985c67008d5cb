"""Trace context across a broker, through ``interlink.tracing`` (OpenTelemetry API, no SDK
needed).

The publisher injects its current trace context into the envelope's headers (inside a PRODUCER
span ``<topic> publish`` when an SDK records); the consumer extracts it and runs the handler in
it (inside a CONSUMER span ``<topic> process``, child of the publisher's span). Without the API,
or with nothing to propagate, both cost a cached lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from interlink.tracing.propagation import extract, inject_span
from interlink.tracing.spans import Spans, fail, start_child

__all__ = ["consume_span", "publish_span"]


@functools.lru_cache(maxsize=1024)
def _attributes(topic: str, operation: str, group: str | None = None) -> Mapping[str, str]:
    # built once per topic (and group) and shared, so read-only by its type: every span copies
    # what it keeps (a plain dict, which dict() copies in C, unlike a MappingProxyType)
    attributes = {
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.system": "interlink",
    }
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    return attributes


def publish_span(tracer: Any, topic: str, headers: MutableMapping[str, str]) -> _Producing:
    """A PRODUCER span for the block, with ``tracer`` (``Spans.tracer()``, not None), its
    context injected into ``headers``."""
    span = start_child(tracer, f"{topic} publish", "producer", _attributes(topic, "send"))
    inject_span(headers, span)
    return _Producing(span)


class _Producing:
    """Ends the PRODUCER span when the block does, failed if the block raised."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            fail(self._span, exc)
        self._span.end()


def consume_span(
    spans: Spans, topic: str, group: str, headers: Mapping[str, str]
) -> AbstractContextManager[object]:
    """Run the block in the publisher's trace (in a CONSUMER span if recording)."""
    return spans.current(
        f"{topic} process",
        kind="consumer",
        parent=extract(headers),
        attributes=_attributes(topic, "process", group),
    )
