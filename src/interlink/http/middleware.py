"""``InterlinkMiddleware``: the server side of propagation, as pure ASGI.

For every HTTP request, before the application runs:

1. ``x-request-id``: a valid id becomes the correlation id (``interlink.context``); a missing
   one is assigned; an invalid one (over 128 characters, or characters outside
   ``[A-Za-z0-9._:/+=@-]``) is answered ``400``. The id is echoed in the response header.
2. ``x-request-timeout-ms``: becomes the current deadline (``deadline_at``), so every interlink
   call the handler makes gets what is left; capped by ``max_timeout``, defaulted by
   ``default_timeout``. ``0`` means the caller has already given up: ``504`` without running
   the handler. A value that is not a non-negative integer is answered ``400``.
3. Trace context: ``traceparent``/``tracestate``/``baggage`` become the current OpenTelemetry
   context, and a SERVER span is opened when an SDK is configured.

While the application runs: with ``enforce_deadline`` (default), a deadline that passes before
the response has started is answered ``504`` (the caller has stopped waiting; the handler is
cancelled); once the response has started, it is left to finish. With ``catch_errors``
(default), an exception before the response started is logged and answered ``500``.

Every error answer is JSON ``{"error": ..., "detail": ..., "correlation_id": ...}`` and never
contains a stack trace. Works under Starlette and FastAPI (``app.add_middleware(
InterlinkMiddleware)``) and around any ASGI application; non-HTTP scopes pass through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from interlink.clock import Clock
from interlink.context import (
    CORRELATION_HEADER,
    DEADLINE_HEADER,
    MAX_CORRELATION_ID_LENGTH,
    new_correlation_id,
    use_correlation_id,
    valid_correlation_id,
)
from interlink.errors import DeadlineExceeded
from interlink.http.propagation import parse_timeout_ms
from interlink.resilience import _validate as v
from interlink.resilience.deadline import Deadline, deadline_at
from interlink.tracing.propagation import TRACE_HEADERS, extract
from interlink.tracing.spans import Spans, fail

__all__ = ["InterlinkMiddleware", "error_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("interlink.http")

_CID = CORRELATION_HEADER.encode()
_DEADLINE = DEADLINE_HEADER.encode()
_TRACE = frozenset(h.encode() for h in TRACE_HEADERS)


def error_body(error: str, detail: str, correlation_id: str) -> bytes:
    """The JSON body of every error answer interlink produces."""
    return json.dumps(
        {"error": error, "detail": detail, "correlation_id": correlation_id},
        separators=(",", ":"),
    ).encode()


async def _send_error(
    send: Send, status: int, error: str, detail: str, correlation_id: str
) -> None:
    body = error_body(error, detail, correlation_id)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (_CID, correlation_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Response:
    """Watches the application's ``send``: adds the correlation id, remembers the status."""

    __slots__ = ("_cid", "_send", "_timer", "started", "status")

    def __init__(self, send: Send, cid: bytes, timer: asyncio.Timeout | None) -> None:
        self._send = send
        self._cid = cid
        self._timer = timer
        self.started = False
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            if self._timer is not None:
                self._timer.reschedule(None)  # answering has begun: let it finish
            headers = list(message.get("headers", ()))
            headers.append((_CID, self._cid))
            message = {**message, "headers": headers}
        await self._send(message)


class InterlinkMiddleware:
    """Correlation id, deadline and trace context from the request; JSON errors, never a 500
    page with a stack trace.

    ``max_timeout``: the most a caller may ask for (seconds); ``default_timeout``: the deadline
    of requests that name none (None: no deadline). ``tracer_provider``: spans go there instead
    of the global provider.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_timeout: float | None = None,
        max_timeout: float | None = None,
        enforce_deadline: bool = True,
        catch_errors: bool = True,
        tracer_provider: object | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.app = app
        self.default_timeout = (
            None if default_timeout is None else v.positive("default_timeout", default_timeout)
        )
        self.max_timeout = None if max_timeout is None else v.positive("max_timeout", max_timeout)
        self.enforce_deadline = enforce_deadline
        self.catch_errors = catch_errors
        self._clock = clock
        self._spans = Spans(tracer_provider, name="interlink.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_cid = raw_deadline = None
        carrier: dict[str, str] | None = None
        for name, value in scope["headers"]:
            if name == _CID:
                raw_cid = value
            elif name == _DEADLINE:
                raw_deadline = value
            elif name in _TRACE:
                if carrier is None:
                    carrier = {}
                carrier[name.decode("latin-1")] = value.decode("latin-1")

        if raw_cid is None:
            cid = new_correlation_id()
        else:
            cid = raw_cid.decode("latin-1")
            if not valid_correlation_id(cid):
                await _send_error(
                    send,
                    400,
                    "bad_request",
                    f"'{CORRELATION_HEADER}' must be 1-{MAX_CORRELATION_ID_LENGTH} characters "
                    "of [A-Za-z0-9._:/+=@-]",
                    new_correlation_id(),
                )
                return

        seconds = self.default_timeout
        if raw_deadline is not None:
            try:
                ms = parse_timeout_ms(raw_deadline.decode("latin-1"))
            except ValueError as exc:
                await _send_error(send, 400, "bad_request", str(exc), cid)
                return
            if ms == 0:
                await _send_error(
                    send,
                    504,
                    "deadline_exceeded",
                    "the caller's deadline had passed before the request was handled",
                    cid,
                )
                return
            seconds = ms / 1000.0
        if self.max_timeout is not None and (seconds is None or seconds > self.max_timeout):
            seconds = self.max_timeout

        parent = None if carrier is None else extract(carrier)
        with use_correlation_id(cid):
            if seconds is None:
                await self._run(scope, receive, send, cid, parent, None)
                return
            with deadline_at(Deadline(self._clock() + seconds, self._clock)):
                await self._run(scope, receive, send, cid, parent, seconds)

    async def _run(  # noqa: PLR0917 - private
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        cid: str,
        parent: object | None,
        seconds: float | None,
    ) -> None:
        method = scope.get("method", "GET")
        attributes = {"http.request.method": method, "url.path": scope.get("path", "")}
        with self._spans.server(method, parent=parent, attributes=attributes) as span:
            timer = (
                asyncio.timeout(seconds) if seconds is not None and self.enforce_deadline else None
            )
            response = _Response(send, cid.encode(), timer)
            try:
                if timer is None:
                    await self.app(scope, receive, response)
                else:
                    async with timer:
                        await self.app(scope, receive, response)
            except Exception as exc:
                if response.started:
                    raise
                late = (timer is not None and timer.expired()) or isinstance(exc, DeadlineExceeded)
                if late and (self.enforce_deadline or self.catch_errors):
                    response.status = 504
                    await _send_error(
                        send,
                        504,
                        "deadline_exceeded",
                        "the request's deadline passed before an answer was ready",
                        cid,
                    )
                elif self.catch_errors:
                    _log.exception("unhandled error in %s %s", method, scope.get("path", ""))
                    response.status = 500
                    await _send_error(send, 500, "internal_error", "internal server error", cid)
                else:
                    raise
            finally:
                if span is not None:
                    self._finish(span, scope, response.status)

    @staticmethod
    def _finish(span: Any, scope: Scope, status: int) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            span.update_name(f"{scope.get('method', 'GET')} {path}")
            span.set_attribute("http.route", path)
        if status:
            span.set_attribute("http.response.status_code", status)
        if status >= 500:
            fail(span, f"HTTP {status}")
