"""How outgoing gRPC metadata reads the current trace context: straight from the context
variable of OpenTelemetry's default runtime context when that is what the API runs on, and
through the API's public ``get_current`` when it is not (another runtime context, or a later
API without the private names)."""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

from interlink.grpc import _metadata

SPAN = trace.NonRecordingSpan(
    trace.SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
)


class _OtherRuntimeContext(ContextVarsRuntimeContext):
    """A runtime context of another type: the fast path must not assume its layout."""


@pytest.fixture
def in_a_span() -> Iterator[None]:
    token = otel_context.attach(trace.set_span_in_context(SPAN))
    try:
        yield
    finally:
        otel_context.detach(token)


def _traceparent(getter: Any) -> str | None:
    original = _metadata.current_context
    _metadata.current_context = getter
    try:
        sent = dict(_metadata.outgoing(None))
    finally:
        _metadata.current_context = original
    return sent.get("traceparent")


def test_default_runtime_context_is_read_from_its_variable(in_a_span: None) -> None:
    """On the API's default runtime context the getter is the context variable's own get, and
    it reads what the public get_current reads."""
    getter = _metadata._context_getter()
    variable = getattr(otel_context._RUNTIME_CONTEXT, "_current_context", None)
    assert isinstance(variable, ContextVar)
    assert getter == variable.get
    assert getter() == otel_context.get_current()
    assert _traceparent(getter) == f"00-{SPAN.get_span_context().trace_id:032x}-00f067aa0ba902b7-01"


def test_another_runtime_context_falls_back_to_the_public_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runtime context of another type (or one without the private variable) is read through
    opentelemetry.context.get_current, and the trace context still goes out."""
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", _OtherRuntimeContext())
    getter = _metadata._context_getter()
    assert getter == otel_context.get_current
    # the replacement runtime context starts empty: attach the span to it
    token = otel_context.attach(trace.set_span_in_context(SPAN))
    try:
        assert _traceparent(getter) == (
            f"00-{SPAN.get_span_context().trace_id:032x}-00f067aa0ba902b7-01"
        )
    finally:
        otel_context.detach(token)


def test_a_runtime_context_without_the_variable_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default type without its private variable is not trusted either."""
    runtime = ContextVarsRuntimeContext()
    monkeypatch.delattr(runtime, "_current_context", raising=False)
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", runtime)
    assert _metadata._context_getter() == otel_context.get_current
