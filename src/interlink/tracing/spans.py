"""Server and client spans, opened only when an OpenTelemetry SDK records them.

A ``Spans`` object belongs to one component (a middleware, a client, an interceptor). It finds
its tracer on each use, cheaply: the global tracer provider is read and compared by identity
with the one seen last, so an SDK configured after the component was built is picked up, and
while the provider is the API's placeholder (``ProxyTracerProvider``: no SDK) or a no-op, every
method does nothing and allocates nothing. An explicit ``tracer_provider`` (what tests pass, to
keep spans out of the process-wide provider) is always used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from interlink.context import CORRELATION
from interlink.tracing.propagation import _Api, api, use_context

__all__ = ["Spans"]

_Attrs = Mapping[str, str | int | float | bool]

#: The span attribute holding the request's correlation id (``x-request-id``).
CORRELATION_ATTRIBUTE = "interlink.correlation_id"

_log = logging.getLogger("interlink.tracing")


class Spans:
    """Open server spans (with the caller's context as parent) and client spans."""

    __slots__ = ("_explicit", "_name", "_seen")

    def __init__(self, tracer_provider: object | None = None, *, name: str = "interlink") -> None:
        self._explicit = tracer_provider
        self._name = name
        # (provider, tracer or None) replaced as one tuple, so threads never pair them wrongly
        self._seen: tuple[object, Any] = (None, None)

    def tracer(self) -> Any | None:
        """The tracer to record with, or None when nothing would record (no API or no SDK)."""
        otel = api()
        if otel is None:
            return None
        provider = self._explicit
        if provider is None:
            if otel.direct:
                provider = otel.trace._TRACER_PROVIDER
                if provider is None:  # no SDK configured: the common, free case
                    return None
            else:
                provider = otel.trace.get_tracer_provider()
        seen = self._seen
        if seen[0] is provider:
            return seen[1]
        tracer = None
        if not isinstance(provider, otel.trace.ProxyTracerProvider | otel.trace.NoOpTracerProvider):
            tracer = provider.get_tracer(self._name)  # type: ignore[union-attr]
        self._seen = (provider, tracer)
        return tracer

    @property
    def enabled(self) -> bool:
        """True when spans are being recorded."""
        return self.tracer() is not None

    def current(
        self,
        name: str,
        *,
        kind: str = "internal",
        parent: object | None = None,
        attributes: _Attrs | None = None,
    ) -> AbstractContextManager[Any | None]:
        """A span of ``kind`` (``server``, ``consumer``, ``internal``...) for the block, child of
        ``parent`` (from ``extract``), made current.

        Yields the span, or None when not recording; either way ``parent`` is current inside
        the block, so outgoing calls carry the trace on even without an SDK.
        """
        tracer = self.tracer()
        if tracer is None:
            return use_context(parent)
        return Scope(tracer, name, kind, parent, attributes)

    def server(
        self, name: str, *, parent: object | None = None, attributes: _Attrs | None = None
    ) -> AbstractContextManager[Any | None]:
        """A SERVER span for the block (``current`` with ``kind="server"``)."""
        return self.current(name, kind="server", parent=parent, attributes=attributes)

    def start_client(self, name: str, attributes: _Attrs | None = None) -> Any | None:
        """Start a CLIENT span under the current context; None when not recording.

        Not made current: pass ``context_of(span)`` to ``inject`` and call ``span.end()``.
        """
        tracer = self.tracer()
        if tracer is None:
            return None
        return start_child(tracer, name, "client", attributes)

    @contextmanager
    def client(self, name: str, *, attributes: _Attrs | None = None) -> Iterator[Any | None]:
        """A CLIENT span for the block (None when not recording); errors mark it failed."""
        span = self.start_client(name, attributes)
        if span is None:
            yield None
            return
        with ending(span):
            yield span


class Scope:
    """``Spans.current`` when recording: the span started, made current, failed by an exception
    leaving the block, ended, and the context restored. One object, not nested generator
    context managers: every served request and consumed message takes this path."""

    __slots__ = (
        "_attributes",
        "_detach",
        "_kind",
        "_name",
        "_parent",
        "_span",
        "_token",
        "_tracer",
    )

    _span: Any
    _token: object
    _detach: Any

    def __init__(
        self, tracer: Any, name: str, kind: str, parent: object | None, attributes: _Attrs | None
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._parent = parent
        self._attributes = attributes
        # _span, _token and _detach are set by __enter__, which __exit__ always follows

    def __enter__(self) -> Any:
        tracer = self._tracer
        if getattr(tracer, "fast_spans", False):  # interlink's own provider
            owned = _owned(self._attributes)
            span, self._token = tracer.open_current(self._name, self._kind, self._parent, owned)
            self._span = span
            self._detach = tracer.detach
            return span
        otel = _api()
        parent = self._parent
        span = self._span = tracer.start_span(
            self._name,
            context=parent,
            kind=otel.trace.SpanKind[self._kind.upper()],
            attributes=with_correlation(self._attributes),
        )
        self._token = otel.attach(otel.trace.set_span_in_context(span, parent))
        self._detach = otel.detach
        return span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        span = self._span
        try:
            if exc is not None:
                fail(span, exc)
            span.end()
        finally:
            try:
                self._detach(self._token)
            except Exception:  # as the API's detach: a token of another context is logged
                _log.exception("Failed to detach context")


def start_child(tracer: Any, name: str, kind: str, attributes: _Attrs | None) -> Any:
    """Start a span of ``kind`` (``"client"``, ``"producer"``) under the current context, with
    ``attributes`` and the correlation id, not made current."""
    if getattr(tracer, "fast_spans", False):  # interlink's own provider
        return tracer.start_child(name, kind, _owned(attributes))
    otel = _api()
    return tracer.start_span(
        name, kind=otel.trace.SpanKind[kind.upper()], attributes=with_correlation(attributes)
    )


@contextmanager
def ending(span: Any) -> Iterator[Any]:
    """Yield ``span``; mark it failed if the block raises; end it either way."""
    try:
        yield span
    except BaseException as exc:
        fail(span, exc)
        raise
    finally:
        span.end()


def _owned(attributes: _Attrs | None) -> dict[str, Any]:
    """A fresh dict of ``attributes`` and the current correlation id, for a tracer that keeps
    the dict it is given as the span's own (interlink's provider)."""
    owned = dict(attributes) if attributes else {}
    cid = CORRELATION.get()
    if cid is not None:
        owned[CORRELATION_ATTRIBUTE] = cid
    return owned


def with_correlation(attributes: _Attrs | None) -> _Attrs | None:
    """``attributes`` plus the current correlation id (only built when a span records)."""
    cid = CORRELATION.get()
    if cid is None:
        return attributes
    return {**(attributes or {}), CORRELATION_ATTRIBUTE: cid}


def _api() -> _Api:
    # only reached once a tracer or a span exists, which the API made
    otel = api()
    if otel is None:  # pragma: no cover - a span exists, so the API does
        raise RuntimeError("opentelemetry-api is not installed")
    return otel


def context_of(span: Any) -> object:
    """The current context with ``span`` as the active span (what ``inject`` takes)."""
    otel = _api()
    return otel.trace.set_span_in_context(span)


def fail(span: Any, error: BaseException | str) -> None:
    """Mark ``span`` failed with ``error`` (an exception is also recorded as an event)."""
    otel = _api()
    if isinstance(error, BaseException):
        span.record_exception(error)
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, type(error).__name__))
    else:
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, error))
