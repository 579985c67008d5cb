"""What every client interceptor shares: the service, the per-method facts, the span source, and
how an error that left the pipeline is shown to the caller."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from interlink.errors import BudgetExhausted
from interlink.resilience.deadline import reset, shrink_to
from interlink.tracing import Spans
from interlink.tracing.propagation import api
from interlink.tracing.spans import fail

from .policy import Service
from .status import StatusError


def span_name(method: str | bytes) -> str:
    name = method.decode("ascii", "replace") if isinstance(method, bytes) else method
    return name[1:] if name.startswith("/") else name


def unwrap(exc: BaseException) -> tuple[BaseException, BaseException | None]:
    """What the caller sees, and its cause: grpc's own error for a status, also when the retry
    budget stopped the retries (the budget's refusal becomes the cause); else ``exc`` itself."""
    if isinstance(exc, StatusError):
        return exc.error, None
    if isinstance(exc, BudgetExhausted) and isinstance(exc.__cause__, StatusError):
        return exc.__cause__.error, exc
    return exc, exc.__cause__


@contextlib.contextmanager
def call_scope(svc: Service, seconds: float | None, span: Any) -> Iterator[None]:
    """The block runs one call through ``svc``'s pipeline under the call's deadline of
    ``seconds`` (None: only the deadline in force); the error that leaves it is raised as what
    the caller sees (``unwrap``), recorded on ``span`` (None: no span), which is ended.

    ``shrink_to``/``reset`` rather than ``with deadline(...)``, which would also build a
    ``Deadline`` object per call for nobody."""
    token = None if seconds is None else shrink_to(seconds, svc.clock)
    try:
        yield
    except Exception as exc:
        error, cause = unwrap(exc)
        if span is not None:
            fail(span, error)
        if error is exc:
            raise
        raise error from cause
    finally:
        if token is not None:
            reset(token)
        if span is not None:
            span.end()


class Base:
    __slots__ = ("_methods", "_service", "_spans", "_trace")

    def __init__(self, service: Service, *, tracer_provider: object | None = None) -> None:
        if not isinstance(service, Service):
            raise ValueError(f"'service' must be an interlink.grpc.Service: {service!r}")
        self._service = service
        self._spans = Spans(tracer_provider, name="interlink.grpc")
        # method -> (idempotent?, span name): worked out once per method, not per call
        self._methods: dict[str | bytes, tuple[bool, str]] = {}
        otel = api()
        #: the API's trace module when one attribute read there tells that no SDK is configured
        #: (``Spans.tracer``'s own first test, without its calls); None: ask ``Spans.tracer``
        self._trace = (
            otel.trace if otel is not None and otel.direct and tracer_provider is None else None
        )

    @property
    def service(self) -> Service:
        """The downstream service whose pipeline the calls run through."""
        return self._service

    def _method(self, method: str | bytes) -> tuple[bool, str]:
        known = self._methods.get(method)
        if known is None:
            known = (self._service.is_idempotent(method), span_name(method))
            self._methods[method] = known
        return known
