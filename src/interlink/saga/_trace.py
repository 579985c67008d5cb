"""A saga's trace: a root span when it starts, a span per step and per compensation after.

A saga outlives the request that started it and the orchestrator that drives it (a restart
resumes it elsewhere), so its spans cannot stay open in memory. What is kept instead is the
root span's context, as W3C headers stored in the saga's state: the root span (``saga
<name>``) is a child of the starting request and ends at once; every step attempt opens a span
under that stored context, in whichever process runs it, before or after a crash. Commands a
step sends carry the step span's context, so the participant's work joins the same trace.

Without an SDK recording, nothing is opened; the request's context (if any) is still stored, so
the trace passes through an orchestrator that records nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from interlink.saga.definition import StepContext
from interlink.tracing.propagation import api, extract, inject
from interlink.tracing.spans import Spans, with_correlation

__all__ = ["root_context", "step_span"]


def root_context(spans: Spans, saga: str, saga_id: str) -> dict[str, str] | None:
    """Start (and end) the saga's root span under the current context; its context as headers
    to store with the saga, or None when there is nothing to propagate."""
    carrier: dict[str, str] = {}
    tracer = spans.tracer()
    otel = api()
    if tracer is None or otel is None:
        inject(carrier)
        return carrier or None
    span = tracer.start_span(
        f"saga {saga}",
        kind=otel.trace.SpanKind.INTERNAL,
        attributes=with_correlation({"saga.name": saga, "saga.id": saga_id}),
    )
    span.end()
    inject(carrier, otel.trace.set_span_in_context(span))
    return carrier


@contextmanager
def step_span(spans: Spans, stored: Mapping[str, str] | None, ctx: StepContext) -> Iterator[Any]:
    """The attempt ``ctx`` describes (a step's, or its compensation's) as a span under the
    saga's root, current for the block; yields the span (None when not recording)."""
    parent = extract(stored) if stored else None
    name = f"saga {ctx.saga}: {'compensate ' if ctx.compensating else ''}{ctx.step}"
    attributes: dict[str, str | int | float | bool] = {
        "saga.name": ctx.saga,
        "saga.id": ctx.saga_id,
        "saga.step": ctx.step,
        "saga.attempt": ctx.attempt,
        "saga.compensating": ctx.compensating,
    }
    with spans.current(name, parent=parent, attributes=attributes) as span:
        yield span
