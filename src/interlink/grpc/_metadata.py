"""What rides in gRPC metadata: the correlation id and W3C trace context (the deadline rides in
gRPC's own ``grpc-timeout``).

Metadata keys are lower case on the wire, so the names are the HTTP header names as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

from interlink.context import CORRELATION, CORRELATION_HEADER
from interlink.resilience.deadline import remaining
from interlink.tracing import TRACE_HEADERS, inject
from interlink.tracing.propagation import api
from interlink.tracing.spans import context_of

__all__ = ["attempt_timeout", "incoming", "outgoing"]

Pairs = tuple[tuple[str, str | bytes], ...]

_READ = frozenset((CORRELATION_HEADER, *TRACE_HEADERS))


def _context_getter() -> Callable[[], Any]:
    """What reads the current OpenTelemetry context: the ``get`` of the context variable the
    API's default runtime context keeps it in (one C call, against three Python calls through
    ``opentelemetry.context.get_current``) when that is what the API runs on, the API's own
    ``get_current`` otherwise, and a reader of nothing without the API."""
    otel = api()
    if otel is None:
        return _nothing
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
    except ImportError:  # pragma: no cover - an API without these names
        return otel.get_current  # type: ignore[no-any-return]
    variable = getattr(_RUNTIME_CONTEXT, "_current_context", None)
    if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext and isinstance(variable, ContextVar):
        return variable.get
    return otel.get_current  # type: ignore[no-any-return]


def _nothing() -> None:
    return None


def _first_context() -> Any:
    global current_context
    current_context = _context_getter()
    return current_context()


#: reads the current trace context (empty or None: none); worked out on first use, as the API
#: is imported lazily
current_context: Callable[[], Any] = _first_context


def outgoing(metadata: Iterable[Any] | None, span: Any = None) -> Any:
    """``metadata`` plus the current correlation id and trace context (with ``span`` as the
    parent when given); returned as it is when there is nothing to add. A key the caller set
    already is left alone: an explicit value wins over the ambient one."""
    cid = CORRELATION.get()  # correlation_id(), without its call
    # the common case (no trace context: an empty one) returns before building anything
    context = current_context() if span is None else context_of(span)
    if not context:
        if cid is None:
            return metadata
        if not metadata:  # a request's calls: just the id
            return ((CORRELATION_HEADER, cid),)
    carrier: dict[str, str] = {}
    if context:
        inject(carrier, context)
    if cid is None and not carrier:
        return metadata
    pairs = list(metadata) if metadata else []
    present = {key for key, _ in pairs} if pairs else ()
    if cid is not None and CORRELATION_HEADER not in present:
        pairs.append((CORRELATION_HEADER, cid))
    for key, value in carrier.items():
        if key not in present:
            pairs.append((key, value))
    return tuple(pairs)


def incoming(metadata: Iterable[Any] | None) -> dict[str, str]:
    """The keys interlink reads (correlation id, trace context) from invocation metadata."""
    found: dict[str, str] = {}
    if metadata:
        for key, value in metadata:
            if key in _READ and isinstance(value, str):
                found[key] = value
    return found


def attempt_timeout(
    per_attempt: float | None, caller: float | None = None
) -> tuple[float | None, bool]:
    """The gRPC timeout for one attempt: the soonest of the current deadline, the caller's
    ``timeout=`` and ``per_attempt``; and whether ``per_attempt`` was the one that bound."""
    left = remaining()
    if caller is not None and (left is None or caller < left):
        left = caller
    if per_attempt is not None and (left is None or per_attempt < left):
        return per_attempt, True
    return left, False
