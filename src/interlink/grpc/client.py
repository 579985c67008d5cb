"""Client interceptors: every unary call to a service runs through that service's pipeline.

::

    stub.GetMenu(request)                         handler code, nothing special
      -> interceptor: metadata += x-request-id, traceparent, tracestate, baggage
         min(caller's timeout=, Service.timeout) becomes the deadline of the whole call
         Service.pipeline.acall(attempt)          fallback, retry+budget, breaker, ...
           attempt: gRPC timeout = min(deadline left, attempt_timeout)
                    non-OK status -> StatusError (classified: interlink.grpc.status)
      <- the successful call (its metadata intact), the fallback's answer, or grpc's own error

In the common case (no span to record, the breaker CLOSED, only retry, breaker and fallback in the
pipeline) the interceptor does not wait for the call: it starts the first attempt and returns a
call object the caller awaits directly, and only a failure enters the pipeline (``_unary``).
``direct_channel`` (``_direct``) runs the same code without grpc.aio's interceptor machinery.

Unary-unary calls get the whole pipeline. Streaming calls only get propagation (metadata and the
shrunken deadline): a stream that fails half way cannot be replayed transparently, and its
duration says nothing about the callee's health, so neither retry nor breaker applies.

``aio_interceptors(svc)`` for ``grpc.aio`` channels (four objects: grpc.aio sorts interceptors
by their first matching kind), ``ClientInterceptor(svc)`` for sync channels
(``grpc.intercept_channel``); ``aio_channel``/``channel`` build an insecure channel with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import grpc.aio

from ._base import Base, call_scope
from ._metadata import attempt_timeout, outgoing
from ._unary import AioUnaryInterceptor
from .policy import Service
from .status import classify

__all__ = [
    "AioUnaryInterceptor",
    "ClientInterceptor",
    "aio_channel",
    "aio_interceptors",
    "channel",
]


class _Propagating(Base):
    """Propagation only, for streaming calls (no retry, no breaker)."""

    __slots__ = ()

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout, _ = attempt_timeout(None, d.timeout)
        return grpc.aio.ClientCallDetails(
            d.method, timeout, outgoing(d.metadata), d.credentials, d.wait_for_ready
        )

    async def _intercept(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_Propagating, grpc.aio.UnaryStreamClientInterceptor):
    __slots__ = ()
    intercept_unary_stream = _Propagating._intercept


class _AioStreamUnary(_Propagating, grpc.aio.StreamUnaryClientInterceptor):
    __slots__ = ()
    intercept_stream_unary = _Propagating._intercept  # type: ignore[assignment] # grpc passes it positionally


class _AioStreamStream(_Propagating, grpc.aio.StreamStreamClientInterceptor):
    __slots__ = ()
    intercept_stream_stream = _Propagating._intercept  # type: ignore[assignment] # grpc passes it positionally


def aio_interceptors(
    service: Service, *, tracer_provider: object | None = None
) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors to give ``grpc.aio.insecure_channel(..., interceptors=...)``: one per
    kind of call, because grpc.aio files an interceptor under the first kind it implements."""
    return [
        cls(service, tracer_provider=tracer_provider)
        for cls in (AioUnaryInterceptor, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]


def aio_channel(
    target: str,
    service: Service,
    *,
    tracer_provider: object | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """An insecure ``grpc.aio`` channel to ``target`` with interlink's interceptors for
    ``service``. For TLS, pass ``aio_interceptors(service)`` to ``grpc.aio.secure_channel``."""
    return grpc.aio.insecure_channel(
        target,
        options=options,
        interceptors=aio_interceptors(service, tracer_provider=tracer_provider),
    )


# ---------------------------------------------------------------------------------- sync


class _SyncDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


if TYPE_CHECKING:
    _Future = grpc.Future[Any]
else:  # grpc's runtime class is not generic; its stubs are
    _Future = grpc.Future


class _Answer(grpc.Call, _Future):
    """A fallback's answer, shaped like the finished call grpc expects an interceptor to return."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> Exception | None:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        fn(self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def add_callback(self, callback: Callable[[], object]) -> bool:
        return False

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK

    def details(self) -> str:
        return ""


class ClientInterceptor(
    Base,
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The same policies and propagation for a sync channel: ``grpc.intercept_channel(ch,
    ClientInterceptor(svc))``. The call blocks through its retries and backoff, also when made
    with ``.future()`` (an interceptor must return a finished outcome to retry it)."""

    __slots__ = ()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """Propagate, then call through the pipeline (sync)."""
        d = client_call_details
        method = d.method
        idempotent, name = self._method(method)
        per_attempt = self._service.attempt_timeout
        span = self._spans.start_client(name)
        metadata = outgoing(d.metadata, span)
        rest = (d.credentials, d.wait_for_ready, getattr(d, "compression", None))

        def attempt() -> Any:
            timeout, bound = attempt_timeout(per_attempt)
            outcome = continuation(_SyncDetails(method, timeout, metadata, *rest), request)
            err = outcome.exception()
            if err is None:
                return outcome
            # grpc's error is also the finished Call: it has code() and trailing_metadata()
            code = getattr(err, "code", None)
            if isinstance(err, grpc.RpcError) and callable(code) and code() is not None:
                raise classify(
                    err,
                    code(),
                    err.trailing_metadata(),
                    idempotent=idempotent,
                    attempt_timeout_hit=bound,
                )
            raise err

        svc = self._service
        with call_scope(svc, svc.call_timeout(d.timeout), span):
            result = svc.pipeline.call(attempt)
        return result if isinstance(result, grpc.Future) else _Answer(result)

    def _details(self, d: Any) -> _SyncDetails:
        timeout, _ = attempt_timeout(None, d.timeout)
        return _SyncDetails(
            d.method,
            timeout,
            outgoing(d.metadata),
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """A server stream: pass through with context."""
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        """A client stream: pass through with context."""
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        """A bidirectional stream: pass through with context."""
        return continuation(self._details(client_call_details), request_iterator)


def channel(
    target: str,
    service: Service,
    *,
    tracer_provider: object | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """An insecure sync channel to ``target`` with interlink's interceptor for ``service``."""
    return grpc.intercept_channel(
        grpc.insecure_channel(target, options=options),
        ClientInterceptor(service, tracer_provider=tracer_provider),
    )
