"""Server interceptors: the request's context is set before the handler runs, so the handler's
own outgoing calls carry it on without a line of code.

For every RPC, before the handler:

1. the correlation id is read from ``x-request-id`` (a fresh one is made when absent; a
   malformed one is refused with INVALID_ARGUMENT, never a crash) and made current
   (``interlink.context.correlation_id()``); it is echoed in the trailing metadata of every
   answer, errors included;
2. the incoming gRPC deadline (``context.time_remaining()``) becomes interlink's current
   deadline, so nested calls get what is left and deadlines shrink along the chain; a request
   whose deadline has already passed is answered DEADLINE_EXCEEDED without running the handler;
3. the caller's trace context (``traceparent``, ``tracestate``, ``baggage``) is extracted and a
   SERVER span is opened when an OpenTelemetry SDK is configured.

An exception escaping the handler is logged with the correlation id and answered with a safe
status (``interlink.grpc.status.status_for_exception``: INTERNAL "internal error" for a bug, no
text or stack trace of the exception). A handler's own ``context.abort`` passes through.

The id is echoed in the trailing metadata only: unary answers send their initial metadata
together with the response, and adding to it would cost a separate network operation per call
and break handlers that send their own initial metadata. A handler that replaces the trailing
metadata keeps the id in it; one that aborts with its own trailing metadata decides for itself.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import grpc
import grpc.aio

from interlink.context import (
    CORRELATION_HEADER,
    new_correlation_id,
    use_correlation_id,
    valid_correlation_id,
)
from interlink.resilience.deadline import deadline
from interlink.tracing import Spans, extract
from interlink.tracing.spans import fail

from ._metadata import incoming
from .status import PUSHBACK_KEY, status_for_exception

__all__ = ["AioServerInterceptor", "ServerInterceptor"]

_log = logging.getLogger("interlink.grpc.server")

# time_remaining() of a call without a deadline is grpc's "infinite future"; anything past a
# year is that, not a budget.
_NO_DEADLINE = 365 * 24 * 3600.0


class _Begin(NamedTuple):
    """What the interceptor learned from the request before the handler ran."""

    cid: str
    left: float | None
    parent: object | None
    refusal: tuple[grpc.StatusCode, str] | None


def _begin(context: Any) -> _Begin:
    """Read the request's metadata and deadline; the trailing metadata gets the id."""
    b = _read(context)
    context.set_trailing_metadata(((CORRELATION_HEADER, b.cid),))
    return b


def _read(context: Any) -> _Begin:
    found = incoming(context.invocation_metadata())
    cid = found.get(CORRELATION_HEADER)
    if cid is None:
        cid = new_correlation_id()
    elif not valid_correlation_id(cid):
        return _Begin(
            new_correlation_id(),
            None,
            None,
            (grpc.StatusCode.INVALID_ARGUMENT, f"malformed {CORRELATION_HEADER} metadata"),
        )
    left: float | None = context.time_remaining()
    if left is not None and (left > _NO_DEADLINE or math.isnan(left)):
        left = None
    if left is not None and left <= 0.0:
        return _Begin(
            cid, 0.0, None, (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before start")
        )
    return _Begin(cid, left, extract(found), None)


def _echo(context: Any, cid: str) -> None:
    """Keep the id in the trailing metadata if the handler replaced it."""
    current = context.trailing_metadata()
    if not current or not any(key == CORRELATION_HEADER for key, _ in current):
        context.set_trailing_metadata((*(current or ()), (CORRELATION_HEADER, cid)))


class _Failure(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str], ...]


def _failure(exc: BaseException, cid: str, method: str, span: Any) -> _Failure:
    code, details, pushback = status_for_exception(exc)
    if code is grpc.StatusCode.INTERNAL:
        _log.error("%s failed (correlation id %s)", method, cid, exc_info=exc)
    else:
        _log.warning("%s answered %s: %r (correlation id %s)", method, code.name, exc, cid)
    if span is not None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        fail(span, code.name)
    trailing: tuple[tuple[str, str], ...] = ((CORRELATION_HEADER, cid),)
    if pushback is not None:
        trailing += ((PUSHBACK_KEY, str(max(0, round(pushback * 1000)))),)
    return _Failure(code, details, trailing)


def _attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _rebuild(handler: Any, wrap: Callable[[Callable[..., Any], str], Any], method: str) -> Any:
    """The same handler with its behaviour wrapped (None when the kind is unknown)."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    )
    for attr, make in kinds:
        behaviour = getattr(handler, attr, None)
        if behaviour is not None:
            wrapped = wrap(behaviour, method)
            if wrapped is None:
                return handler
            return make(
                wrapped,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


@contextlib.contextmanager
def _serving(
    context: Any,
    b: _Begin,
    spans: Spans,
    method: str,
    passes: Callable[[Exception, Any], bool],
) -> Iterator[list[_Failure]]:
    """The handler's block: the request's correlation id and deadline current, in a SERVER
    span (None when not recording) under the caller's trace context. An exception that
    ``passes(exc, context)`` says is the handler's own abort goes on; any other is logged and
    left in the list (the caller answers it with that status); an answer keeps the id in the
    trailing metadata."""
    failed: list[_Failure] = []
    attributes = _attributes(method)
    with (
        use_correlation_id(b.cid),
        deadline(b.left),
        spans.server(method, parent=b.parent, attributes=attributes) as span,
    ):
        try:
            yield failed
        except Exception as exc:
            if passes(exc, context):
                raise
            failed.append(_failure(exc, b.cid, method, span))
        else:
            _echo(context, b.cid)


def _aio_abort(exc: Exception, context: Any) -> bool:
    return isinstance(exc, grpc.aio.AbortError)


def _sync_abort(exc: Exception, context: Any) -> bool:
    # a sync context.abort() raises a bare Exception after setting the code
    code = context.code()
    return code is not None and code is not grpc.StatusCode.OK


class _Common:
    __slots__ = ("_cache", "_spans")

    def __init__(self, *, tracer_provider: object | None = None) -> None:
        self._spans = Spans(tracer_provider, name="interlink.grpc")
        # method -> (the handler grpc gave, our wrapped one): wrap once per method, not per call
        self._cache: dict[str, tuple[Any, Any]] = {}

    def _wrapped(self, handler: Any, method: str, wrap: Callable[..., Any]) -> Any:
        if handler is None:
            return None
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _rebuild(handler, wrap, method)
        self._cache[method] = (handler, wrapped)
        return wrapped


class AioServerInterceptor(_Common, grpc.aio.ServerInterceptor):
    """Correlation id, deadline and trace context for the handlers of a ``grpc.aio`` server:
    ``grpc.aio.server(interceptors=[AioServerInterceptor()])``. Handlers that are plain ``def``
    (run by grpc in a thread pool) pass through unchanged."""

    __slots__ = ()

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler grpc found for this method."""
        handler = await continuation(handler_call_details)
        return self._wrapped(handler, handler_call_details.method, self._wrap)  # type: ignore[no-any-return]

    def _wrap(self, behaviour: Any, method: str) -> Any:
        spans = self._spans

        if inspect.isasyncgenfunction(behaviour):

            async def streaming(request: Any, context: Any) -> Any:
                b = _begin(context)
                if b.refusal is not None:
                    await context.abort(*b.refusal, ((CORRELATION_HEADER, b.cid),))
                with _serving(context, b, spans, method, _aio_abort) as failed:
                    async for item in behaviour(request, context):
                        yield item
                if failed:
                    await context.abort(*failed[0])

            return streaming

        if not inspect.iscoroutinefunction(behaviour):
            return None

        async def unary(request: Any, context: Any) -> Any:
            b = _begin(context)
            if b.refusal is not None:
                await context.abort(*b.refusal, ((CORRELATION_HEADER, b.cid),))
            response = None
            with _serving(context, b, spans, method, _aio_abort) as failed:
                response = await behaviour(request, context)
            if failed:
                await context.abort(*failed[0])
            return response

        return unary


class ServerInterceptor(_Common, grpc.ServerInterceptor):
    """The same for a sync ``grpc.server(executor, interceptors=[ServerInterceptor()])``."""

    __slots__ = ()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the handler grpc found for this method."""
        handler = continuation(handler_call_details)
        return self._wrapped(handler, handler_call_details.method, self._wrap)  # type: ignore[no-any-return]

    def _wrap(self, behaviour: Any, method: str) -> Any:
        spans = self._spans

        def answer(context: Any, failure: _Failure) -> None:
            context.set_trailing_metadata(failure.trailing)
            context.abort(failure.code, failure.details)

        if inspect.isgeneratorfunction(behaviour):

            def streaming(request: Any, context: Any) -> Any:
                b = _begin(context)
                if b.refusal is not None:
                    context.abort(*b.refusal)
                with _serving(context, b, spans, method, _sync_abort) as failed:
                    yield from behaviour(request, context)
                if failed:
                    answer(context, failed[0])

            return streaming

        def unary(request: Any, context: Any) -> Any:
            b = _begin(context)
            if b.refusal is not None:
                context.abort(*b.refusal)
            response = None
            with _serving(context, b, spans, method, _sync_abort) as failed:
                response = behaviour(request, context)
            if failed:
                answer(context, failed[0])
            return response

        return unary
