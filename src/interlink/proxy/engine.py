"""The proxy engine: route, filter (auth, limits), forward through the route's policies,
stream the answer back.

``Proxy`` serves a ``RouteTable``; ``proxy.table = new_table`` swaps the whole table in one
assignment, so a reload is atomic: a request reads the table once when it starts and finishes on
it, new requests see the new one. For each request::

    parse (http1) -> correlation id + trace -> route (router) -> CORS preflight
      -> auth (auth) -> rate limits (limits)
      -> the route's timeout, and its policies (interlink.resilience.Pipeline: retry +
         budget, breaker, bulkhead) around one attempt: choose an instance (upstreams),
         take a pooled connection (upstream), send the head and body, await the response head
      -> stream the response body back, echoing x-request-id and traceparent

The usual request (a GET without a body, to fixed upstreams, on a route without policies, with
a cached token or an API key and in-memory limits, while an idle pooled connection waits) is
answered from the connections' callbacks, without a task or a coroutine per request
(``Proxy.answer_now``); any other request, or any turn off that path, goes the general way.

Retries happen only when it is safe: the attempt failed before the upstream answered or it
answered 502/503/504, and the request can be sent again (no body, or a small body that arrived
whole, and an idempotent method — or nothing was sent at all). The client's own deadline
(``x-request-timeout-ms``) caps the route's timeout and travels upstream, shrunk by the time
spent here.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from random import getrandbits
from typing import Any

from interlink.context import CORRELATION_HEADER, DEADLINE_HEADER
from interlink.context import valid_correlation_id as _valid_id
from interlink.errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpenError,
    DeadlineExceeded,
    RateLimited,
)
from interlink.proxy.auth import Authenticator, Identity, Requirement
from interlink.proxy.errors import ProxyError
from interlink.proxy.http1 import Body, ClientGone, Limits, Request, ServerConnection
from interlink.proxy.limits import Limiter, LimitRule
from interlink.proxy.metrics import ProxyMetrics
from interlink.proxy.router import Match, Router
from interlink.proxy.upstream import (
    ResponseHead,
    UpstreamConnection,
    UpstreamFailure,
    UpstreamPool,
    header_pairs,
)
from interlink.proxy.upstreams import FixedUpstream, Upstream
from interlink.resilience import Pipeline, deadline
from interlink.tracing.propagation import TRACE_HEADERS, TRACEPARENT, extract, inject
from interlink.tracing.spans import CORRELATION_ATTRIBUTE, Spans, context_of, fail

__all__ = ["HOP_BY_HOP", "Cors", "Policies", "Proxy", "RouteSpec", "RouteTable"]

#: Headers that describe one connection, not the message: never forwarded either way.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {
    "content-length",
    CORRELATION_HEADER,
    "traceparent",
    DEADLINE_HEADER,
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-for",  # extended with the client's address, see _upstream_head
    "expect",  # answered by the proxy itself, see _forward
}
#: what is not forwarded when the upstream gets its own ``host`` (no ``preserve_host``)
_NOT_FORWARDED_NOR_HOST = _NOT_FORWARDED | {"host"}
#: the response headers the proxy drops: hop-by-hop, and the ones it sets itself
_HOP_BY_HOP_BYTES = frozenset(
    name.encode() for name in (*HOP_BY_HOP, CORRELATION_HEADER, "traceparent")
)
#: ``Connection`` values that name no other header (the usual ones)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
#: a response header line the proxy drops (``_HOP_BY_HOP_BYTES``), found in ``b"\n"`` + the
#: lower-cased header lines: from the LF before it to its CR (no ``re.IGNORECASE``: it makes
#: every position a candidate)
_DROPPED_LINE = re.compile(
    rb"\n(?:%b):[^\r]*\r" % b"|".join(re.escape(n) for n in sorted(_HOP_BY_HOP_BYTES))
)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_RETRY_STATUSES = frozenset({502, 503, 504})

#: Answers a matched request itself instead of proxying it (REST -> gRPC):
#: ``(request, match, metadata) -> (status, headers, body)``; ``metadata`` starts with the
#: correlation id and traceparent, then the identity headers.
Translator = Callable[
    [Request, Match[Any], list[tuple[str, str]]],
    Awaitable[tuple[int, list[tuple[str, str]], bytes]],
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cors:
    """Cross-origin rules: which origins may call, with which methods and headers."""

    allow_origins: frozenset[str] = frozenset()
    allow_methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = ("authorization", "content-type", "x-api-key", "x-request-id")
    expose_headers: tuple[str, ...] = ("x-request-id", "traceparent", "retry-after")
    allow_credentials: bool = False
    max_age: int = 600

    def origin_allowed(self, origin: str) -> bool:
        """Whether ``origin`` may call."""
        return "*" in self.allow_origins or origin in self.allow_origins

    def headers(self, origin: str, preflight: bool) -> list[tuple[str, str]]:
        """The ``Access-Control-*`` headers answering ``origin``."""
        allowed = "*" if "*" in self.allow_origins and not self.allow_credentials else origin
        out = [("access-control-allow-origin", allowed), ("vary", "origin")]
        if self.allow_credentials:
            out.append(("access-control-allow-credentials", "true"))
        if preflight:
            out += [
                ("access-control-allow-methods", ", ".join(self.allow_methods)),
                ("access-control-allow-headers", ", ".join(self.allow_headers)),
                ("access-control-max-age", str(self.max_age)),
            ]
        elif self.expose_headers:
            out.append(("access-control-expose-headers", ", ".join(self.expose_headers)))
        return out


class Policies:
    """A route's resilience policies, composed into a ``Pipeline`` on first use.

    Composing a pipeline generates its code (milliseconds): paid once by a route's first
    request rather than by every route of a 5,000-route reload.
    """

    __slots__ = ("_pipeline", "name", "policies")

    def __init__(self, *policies: object, name: str) -> None:
        self.policies = policies
        self.name = name
        self._pipeline: Pipeline | None = None

    @property
    def pipeline(self) -> Pipeline:
        """The composed pipeline."""
        pipeline = self._pipeline
        if pipeline is None:
            pipeline = self._pipeline = Pipeline(*self.policies, name=self.name)
        return pipeline


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec:
    """What happens to a request once it matched a route."""

    name: str
    upstream: Upstream | None = None
    timeout: float | None = None
    policies: Policies | None = None
    auth: Requirement | None = None
    limits: tuple[LimitRule, ...] = ()
    preserve_host: bool = False
    cors: bool = False
    translator: Translator | None = None
    breaker: Any = None

    def __post_init__(self) -> None:
        if (self.upstream is None) == (self.translator is None):
            raise ValueError(
                f"route {self.name!r} needs exactly one of an upstream or a translator"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTable:
    """Everything a reload replaces at once: routes, credentials, limits, CORS."""

    router: Router[RouteSpec]
    authenticator: Authenticator | None = None
    limiter: Limiter | None = None
    cors: Cors = field(default_factory=Cors)
    identity_prefix: str = "x-auth-"


class _Answered(Exception):
    """An upstream answer the policies count as a failure (5xx); relayed if it is the last."""

    def __init__(self, conn: UpstreamConnection, head: ResponseHead, retriable: bool) -> None:
        super().__init__(f"upstream answered {head.status}")
        self.conn = conn
        self.head = head
        self.retriable = retriable


def _ids(incoming: str | None) -> tuple[str, str]:
    """(a fresh correlation id, the W3C ``traceparent`` of the gateway's hop): the hop
    continues the client's trace (a new span id, the client's as parent) or starts one. One
    call for the randomness of both: it is per request."""
    # 128 + 128 + 64 bits: correlation id, trace id, span id. They need to be unique, not
    # secret: no syscall
    random = getrandbits(320).to_bytes(40, "big").hex()
    span = random[64:]
    found = None if incoming is None else TRACEPARENT.match(incoming)
    if found is not None:
        return random[:32], f"00-{found['trace_id']}-{span}-{found['flags']}"
    return random[:32], f"00-{random[32:64]}-{span}-01"


class _Exchange:
    """One request on its way through the engine: what every step reads and adds to."""

    __slots__ = (
        "conn",
        "due",
        "echo",
        "identity",
        "match",
        "request",
        "request_id",
        "route",
        "streamed",
        "table",
        "traceparent",
    )

    def __init__(self, request: Request, conn: ServerConnection, table: RouteTable) -> None:
        self.request = request
        self.conn = conn
        self.table = table
        incoming = request.header(CORRELATION_HEADER)
        fresh, self.traceparent = _ids(request.header("traceparent"))
        self.request_id = incoming if incoming is not None and _valid_id(incoming) else fresh
        #: headers for the client's response: correlation id, trace, CORS, rate limits
        self.echo = [(CORRELATION_HEADER, self.request_id), ("traceparent", self.traceparent)]
        #: the authenticated caller, told to the upstream in headers
        self.identity: Identity | None = None
        self.match: Match[RouteSpec] | None = None
        self.route: RouteSpec | None = None
        self.streamed = False
        #: when the upstream's response head must have arrived (the engine's clock)
        self.due: float | None = None

    @property
    def replayable(self) -> bool:
        """Whether the request can be sent again: no body, or a kept one not yet streamed."""
        request = self.request
        return not request.has_body or (request.body.replayable and not self.streamed)


class Proxy:
    """Serves a ``RouteTable`` (see the module docstring)."""

    def __init__(
        self,
        table: RouteTable,
        *,
        limits: Limits | None = None,
        pool: UpstreamPool | None = None,
        metrics: ProxyMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracer_provider: object | None = None,
    ) -> None:
        self.table = table
        self.limits = limits or Limits()
        self.pool = pool or UpstreamPool()
        self.metrics = metrics or ProxyMetrics()
        self.metrics.breaker_states = self._breaker_states
        self._clock = clock
        #: spans when an OpenTelemetry SDK records (``tracer_provider``, else the global one)
        self._spans = Spans(tracer_provider, name="interlink.proxy")
        self.in_flight = 0

    def _breaker_states(self) -> list[tuple[str, str]]:
        out = []
        for route in self.table.router.routes:
            breaker = route.target.breaker
            if breaker is not None:
                out.append((route.name, breaker.state.value))
        return out

    def connection(self) -> ServerConnection:
        """A protocol for one accepted client connection."""
        return ServerConnection(self.handle, self.limits, answer_now=self.answer_now)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        sock: socket.socket | None = None,
    ) -> asyncio.Server:
        """Listen on ``host:port`` (or ``sock``); returns the started server."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            return await loop.create_server(self.connection, sock=sock, backlog=1024)
        return await loop.create_server(
            self.connection, host, port, reuse_port=reuse_port or None, backlog=1024
        )

    # ------------------------------------------------------------------ one request

    async def handle(self, request: Request, conn: ServerConnection) -> None:
        """Answer one request (called by ``ServerConnection``)."""
        # the table is read once: reloads are atomic
        await self._serve(_Exchange(request, conn, self.table), self._clock())

    async def _serve(
        self,
        ex: _Exchange,
        started: float,
        *,
        admitted: bool = False,
        error: ProxyError | None = None,
    ) -> None:
        """The general way: admit (unless ``admitted``), forward, relay; or answer ``error``."""
        conn = ex.conn
        self.in_flight += 1
        tracer = self._spans.tracer()  # None unless an OpenTelemetry SDK records: the usual
        span = None if tracer is None else self._start_span(tracer, ex)
        try:
            if error is not None:
                raise error
            if admitted or await self._admit(ex):
                await self._forward(ex)
        except ProxyError as failure:
            self._answer_error(ex, failure)
        except ClientGone:
            conn.abort()
        finally:
            self.in_flight -= 1
            route = ex.route.name if ex.route is not None else "-"
            self.metrics.observe(route, conn.status or 499, self._clock() - started)
            if span is not None:
                _end_span(span, ex, route, conn.status or 499)

    def _answer_error(self, ex: _Exchange, error: ProxyError) -> None:
        route = ex.route.name if ex.route is not None else "-"
        if error.status in (502, 503, 504):
            self.metrics.upstream_error(route, error.reason)
        if ex.conn.started:
            ex.conn.abort()
        else:
            ex.conn.respond_error(error, ex.request_id, ex.echo[1:])

    def answer_now(self, request: Request, conn: ServerConnection) -> bool:
        """Take the usual request without a task (see the module docstring): False, with
        nothing done, when it needs the general way from the start."""
        if request.method != "GET" or request.has_body or request.upgrade:
            return False
        if self._spans.tracer() is not None:
            return False
        table = self.table
        try:
            match = table.router.match(
                "GET", request.header("host") or "", request.target, request.headers
            )
        except ProxyError:
            return False  # answered the general way
        route = match.route.target
        upstream = route.upstream
        limiter = table.limiter if route.limits else None
        if (
            route.policies is not None
            or not isinstance(upstream, FixedUpstream)
            or (limiter is not None and not limiter.decides_now)
            or (route.cors and request.header("origin") is not None)
            or request.header(DEADLINE_HEADER) is not None
            or request.header("expect") is not None
        ):
            return False
        identity = None
        if route.auth is not None:
            authenticator = table.authenticator
            if authenticator is None:
                return False
            identity = authenticator.authenticate_now(
                route.auth,
                request.header("authorization"),
                request.header(authenticator.api_key_header),
            )
            if identity is None:  # to verify, or to refuse: the general way
                return False
        started = self._clock()
        ex = _Answer(request, conn, table)
        ex.match = match
        ex.route = route
        ex.identity = identity
        if limiter is not None:
            try:
                ex.echo += limiter.check_now(
                    route.limits,
                    route.name,
                    None if identity is None else identity.subject,
                    request.client,
                )
            except ProxyError as error:
                self.metrics.rejected(route.name)
                conn.continue_with(self._serve(ex, started, error=error))
                return True
        target = upstream.choose_now()
        conn_up = self.pool.take_idle(target.host, target.port)
        if conn_up is None:  # a connection to open (or to wait for): the general way
            conn.continue_with(self._serve(ex, started, admitted=True))
            return True
        self.in_flight += 1
        timeout = route.timeout
        if timeout is not None:
            ex.due = started + timeout
        ex.proxy = self
        ex.conn_up = conn_up
        ex.started = started
        conn_up.send(self._upstream_head(ex, target.address, "\r\n"), timeout=timeout, listener=ex)
        return True

    def _start_span(self, tracer: Any, ex: _Exchange) -> Any:
        """A SERVER span for the gateway's hop, child of the client's trace; its context is
        what travels upstream and back (instead of the ids drawn without an SDK)."""
        request = ex.request
        carrier = {
            name: value for name in TRACE_HEADERS if (value := request.header(name)) is not None
        }
        span = tracer.start_span(
            request.method,
            context=extract(carrier),
            kind=_span_kind_server(),
            attributes={
                CORRELATION_ATTRIBUTE: ex.request_id,
                "http.request.method": request.method,
            },
        )
        out: dict[str, str] = {}
        inject(out, context_of(span))
        traceparent = out.get("traceparent")
        if traceparent is not None:
            ex.traceparent = traceparent
            ex.echo[1] = ("traceparent", traceparent)
        return span

    async def _admit(self, ex: _Exchange) -> bool:
        """Route, CORS, auth and rate limits; False when the request is already answered."""
        request, table = ex.request, ex.table
        origin = request.header("origin")
        method = request.method
        asked = request.header("access-control-request-method")
        preflight = method == "OPTIONS" and origin is not None and asked is not None
        if preflight:
            method = (asked or "").upper()
        match = table.router.match(
            method, request.header("host") or "", request.target, request.headers
        )
        ex.match = match
        route = ex.route = match.route.target
        if route.cors and origin is not None and table.cors.origin_allowed(origin):
            cors_headers = table.cors.headers(origin, preflight)
            if preflight:
                ex.conn.start(204, [*cors_headers, *ex.echo, ("content-length", "0")])
                return False
            ex.echo += cors_headers
        consumer: str | None = None
        if route.auth is not None:
            authenticator = table.authenticator
            if authenticator is None:
                raise ProxyError("auth_invalid", "no credentials are configured")
            identity = await authenticator.authenticate(
                route.auth,
                request.header("authorization"),
                request.header(authenticator.api_key_header),
            )
            consumer = identity.subject
            ex.identity = identity
        if route.limits and table.limiter is not None:
            try:
                ex.echo += await table.limiter.check(
                    route.limits, route.name, consumer, request.client
                )
            except ProxyError as error:
                if error.reason == "rate_limited":
                    self.metrics.rejected(route.name)
                raise
        return True

    async def _forward(self, ex: _Exchange) -> None:
        route, request = ex.route, ex.request
        assert route is not None
        limit = route.timeout
        client_ms = request.header(DEADLINE_HEADER)
        if client_ms is not None:
            try:
                client_seconds = max(0.001, int(client_ms) / 1000)
            except ValueError:
                raise ProxyError("bad_request", f"'{DEADLINE_HEADER}' must be an integer") from None
            if limit is None or client_seconds < limit:
                limit = client_seconds
        if route.translator is not None:
            assert ex.match is not None
            with deadline(limit):
                metadata = ex.echo[:2]
                if ex.identity is not None:
                    metadata += ex.identity.headers(ex.table.identity_prefix)
                status, headers, body = await route.translator(request, ex.match, metadata)
            ex.conn.start(status, [*headers, *ex.echo, ("content-length", str(len(body)))])
            ex.conn.write(body)
            if status >= 500:
                self.metrics.upstream_error(route.name, f"grpc_{status}")
            return
        expect = request.header("expect")
        if expect is not None and not request.body.complete:
            if expect.lower() != "100-continue":
                raise ProxyError("bad_request", "only 'Expect: 100-continue' is understood")
            ex.conn.send_raw(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body may come now
        conn_up, head = await self._call(ex, limit)
        await self._relay(ex, conn_up, head)

    async def _call(
        self, ex: _Exchange, limit: float | None
    ) -> tuple[UpstreamConnection, ResponseHead]:
        """The upstream's answer through the route's timeout and policies; every way of
        failing becomes the ``ProxyError`` with its reason."""
        route = ex.route
        assert route is not None
        # The timeout is enforced where the time goes, by the upstream connection's own timer
        # until the response head (one timer per request, no cancellation machinery); the
        # policies get it as the deadline in force, so a retry never sleeps past it.
        ex.due = None if limit is None else self._clock() + limit
        try:
            if route.policies is not None:
                with deadline(limit):
                    answer: tuple[UpstreamConnection, ResponseHead]
                    answer = await route.policies.pipeline.acall(self._attempt, ex)
                    return answer
            return await self._attempt(ex)
        except _Answered as answered:  # a 5xx, relayed as the upstream said it
            return answered.conn, answered.head
        except UpstreamFailure as failure:
            raise failure.to_error() from None
        except CircuitOpenError:
            raise ProxyError("circuit_open", "the upstream's circuit breaker is open") from None
        except BulkheadFull:
            raise ProxyError(
                "bulkhead_full", "too many requests to this upstream at once"
            ) from None
        except RateLimited:
            raise ProxyError("rate_limited", "the route's rate limit is reached") from None
        except BudgetExhausted as exhausted:
            cause = exhausted.__cause__
            if isinstance(cause, _Answered):
                return cause.conn, cause.head
            if isinstance(cause, UpstreamFailure):
                raise cause.to_error() from None
            raise ProxyError("upstream_reset", "retries are spent") from None
        except (DeadlineExceeded, TimeoutError):
            raise ProxyError("upstream_timeout", "the upstream did not answer in time") from None

    async def _attempt(self, ex: _Exchange) -> tuple[UpstreamConnection, ResponseHead]:
        """One try: choose an instance, send, wait for the head. A dead pooled connection is
        replaced once without counting as a retry."""
        route = ex.route
        assert route is not None
        assert route.upstream is not None
        idempotent = ex.request.method in _IDEMPOTENT or any(
            name == "idempotency-key" for name, _ in ex.request.headers
        )
        target = await route.upstream.choose()
        ok = False
        try:
            for fresh in (False, True):
                conn_up = await self.pool.acquire(target.host, target.port)
                try:
                    head = await self._exchange(ex, conn_up, target.address)
                except UpstreamFailure as failure:
                    conn_up.abort()
                    replayable = ex.replayable
                    if failure.stale and not fresh and replayable and idempotent:
                        continue  # the upstream had closed the pooled connection: resend
                    failure.retriable = failure.reason == "upstream_connect_refused" or (
                        idempotent and replayable
                    )
                    self.metrics.upstream_error(route.name, failure.reason)
                    raise
                except BaseException:
                    conn_up.abort()
                    raise
                if head.status >= 500:
                    retriable = head.status in _RETRY_STATUSES and idempotent and ex.replayable
                    raise _Answered(conn_up, head, retriable)
                ok = True
                return conn_up, head
            raise UpstreamFailure("upstream_reset", "the upstream closed the connection")
        finally:
            target.done(ok)

    def _upstream_head(self, ex: _Exchange, host: str, end: str) -> bytes:
        """The request head for the upstream, its framing headers and blank line in ``end``.

        The lines that depend only on the request's method, headers, route, identity and
        upstream are kept per connection (``ServerConnection.memo``) and reused for a
        request like the last one: clients repeat their requests."""
        request = ex.request
        key = (request.headers, ex.match, ex.identity, host, request.method, ex.table)
        memo = ex.conn.memo
        if memo is not None and memo[0] == key:
            fixed: bytes = memo[1]
        else:
            fixed = self._fixed_lines(ex, host).encode("latin-1")
            ex.conn.memo = (key, fixed)
        tail = f"{CORRELATION_HEADER}: {ex.request_id}\r\ntraceparent: {ex.traceparent}\r\n"
        if request.upgrade:
            tail += f"connection: upgrade\r\nupgrade: {request.header('upgrade')}\r\n"
        if ex.due is not None:
            left = ex.due - self._clock()
            tail += f"{DEADLINE_HEADER}: {max(1, int(left * 1000))}\r\n"
        return fixed + (tail + end).encode("latin-1")

    @staticmethod
    def _fixed_lines(ex: _Exchange, host: str) -> str:
        """The request line and the headers for the upstream that are the same for a
        request like this one (the request's own, forwarding and identity headers)."""
        request, route, match = ex.request, ex.route, ex.match
        assert route is not None
        assert match is not None
        header = request.header
        preserve_host = route.preserve_host
        dropped = _NOT_FORWARDED if preserve_host else _NOT_FORWARDED_NOR_HOST
        connection = header("connection")
        if connection is not None:
            dropped = dropped | {t.strip().lower() for t in connection.split(",")}
        prefix = ex.table.identity_prefix
        lines = [f"{request.method} {match.upstream_path} HTTP/1.1\r\n"]
        for name, value in request.headers:
            if name not in dropped and not name.startswith(prefix):
                lines += (name, ": ", value, "\r\n")
        original_host = header("host")
        if not preserve_host:
            lines.append(f"host: {host}\r\n")
        if original_host:
            lines.append(f"x-forwarded-host: {original_host}\r\n")
        forwarded_for = request.client
        earlier = header("x-forwarded-for")
        if earlier is not None:
            forwarded_for = f"{earlier}, {forwarded_for}"
        lines.append(f"x-forwarded-for: {forwarded_for}\r\nx-forwarded-proto: http\r\n")
        if ex.identity is not None:
            lines.append(ex.identity.header_lines(prefix))
        return "".join(lines)

    async def _exchange(
        self, ex: _Exchange, conn_up: UpstreamConnection, host: str
    ) -> ResponseHead:
        """Send the request on ``conn_up`` and wait for the response head."""
        request = ex.request
        head_only = request.method == "HEAD"
        body = request.body
        timeout = None if ex.due is None else ex.due - self._clock()
        if timeout is not None and timeout <= 0:
            raise UpstreamFailure("upstream_timeout", "the upstream did not answer in time")
        if not request.has_body:
            conn_up.send(
                self._upstream_head(ex, host, "\r\n"), head_only=head_only, timeout=timeout
            )
            return await conn_up.response()
        if body.replayable and not ex.streamed:
            data = body.kept()
            lines = self._upstream_head(ex, host, f"content-length: {len(data)}\r\n\r\n")
            conn_up.send(lines + data, head_only=head_only, timeout=timeout)
            return await conn_up.response()
        # a body still arriving (or too big to keep): send the head, pump the body meanwhile
        length = request.header("content-length")
        chunked = not length
        framing = (
            "transfer-encoding: chunked\r\n\r\n" if chunked else f"content-length: {length}\r\n\r\n"
        )
        conn_up.send(self._upstream_head(ex, host, framing), head_only=head_only, timeout=timeout)
        ex.streamed = True
        pumping = asyncio.ensure_future(_pump(body, conn_up, chunked))
        head_waiter = asyncio.ensure_future(conn_up.response())
        try:
            await asyncio.wait({pumping, head_waiter}, return_when=asyncio.FIRST_COMPLETED)
            if pumping.done() and pumping.exception() is not None:
                raise pumping.exception()  # type: ignore[misc]
            head = await head_waiter
            if not pumping.done():
                if head.status >= 400:
                    pumping.cancel()  # the upstream answered early: the rest is not wanted
                else:
                    await pumping
            return head
        finally:
            pumping.cancel()
            head_waiter.cancel()

    async def _relay(self, ex: _Exchange, conn_up: UpstreamConnection, head: ResponseHead) -> None:
        """Stream the upstream's answer to the client."""
        conn = ex.conn
        block, sized = _response_head(ex, head)
        if head.upgrade and ex.request.upgrade:
            await self._tunnel(conn, conn_up, head, block)
            return
        conn.start_encoded(head.status, block, sized=sized)
        conn.set_producer(conn_up.transport)

        def sink(data: bytes) -> None:
            if data:
                conn.write(data)
            else:
                conn.end()

        try:
            done = conn_up.stream_to(sink)  # what already arrived goes out with the head
            assert done is not None
            conn.flush()  # the rest may take a while (server-sent events): the head goes now
            await done
        except UpstreamFailure:
            conn.abort()  # mid-body: the client must see a broken response, not a short one
            conn_up.abort()
            return
        finally:
            conn.set_producer(None)
        if ex.request.body.complete:
            self.pool.release(conn_up)
        else:
            conn_up.abort()

    async def _tunnel(
        self,
        conn: ServerConnection,
        conn_up: UpstreamConnection,
        head: ResponseHead,
        block: bytes,
    ) -> None:
        upgrade = next((v for k, v in head.headers if k == b"upgrade"), b"websocket")
        conn.start_encoded(
            101, b"connection: upgrade\r\nupgrade: %b\r\n%b" % (upgrade, block), sized=True
        )
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def from_client(data: bytes) -> None:
            if data:
                conn_up.write(data)
            elif not finished.done():
                finished.set_result(None)

        def from_upstream(data: bytes) -> None:
            if data:
                conn.send_raw(data)
            elif not finished.done():
                finished.set_result(None)

        early = conn_up.tunnel(from_upstream)
        if early:
            conn.send_raw(early)
        rest = conn.tunnel(from_client)
        if rest:
            conn_up.write(rest)
        try:
            await finished
        finally:
            conn_up.abort()
            conn.close()


class _Answer(_Exchange):
    """A request answered from callbacks (``Proxy.answer_now``): told the upstream's head, its
    body, and its end or failure by the upstream connection. The exchange itself (one object
    per request, not two); ``proxy``, ``conn_up`` and ``started`` are set once it is sent."""

    __slots__ = ("conn_up", "proxy", "started")

    proxy: Proxy
    conn_up: UpstreamConnection
    started: float

    def head(self, head: ResponseHead) -> None:
        conn = self.conn
        block, sized = _response_head(self, head)
        conn.start_encoded(head.status, block, sized=sized)
        self.conn_up.stream_to(self.sink)  # the head is held back to go out with the body

    def whole(self, head: ResponseHead, body: list[bytes]) -> None:
        block, sized = _response_head(self, head)
        self.conn.send_whole(head.status, block, sized, body)
        self.proxy.pool.release(self.conn_up)
        self._finish()

    def waiting(self) -> None:
        conn = self.conn
        conn.flush()  # the rest of the body takes a while: the head goes now
        # back-pressure only matters for a body that spans reads: a whole answer was written
        # (and the client's writes paused or not) before this is called
        conn.set_producer(self.conn_up.transport)

    def sink(self, data: bytes) -> None:
        conn = self.conn
        if data:
            conn.write(data)
            return
        conn.end()
        self.proxy.pool.release(self.conn_up)
        self._finish()

    def failed(self, failure: UpstreamFailure) -> None:
        proxy, ex = self.proxy, self
        conn = self.conn
        conn.set_producer(None)
        self.conn_up.abort()
        if conn.started:  # mid-body: the client must see a broken response, not a short one
            conn.abort()
        elif failure.stale:  # the upstream had closed the pooled connection: a fresh one
            proxy.in_flight -= 1
            conn.continue_with(proxy._serve(ex, self.started, admitted=True))
            return
        else:
            route = ex.route
            assert route is not None
            proxy.metrics.upstream_error(route.name, failure.reason)
            proxy._answer_error(ex, failure.to_error())
        self._finish()

    def _finish(self) -> None:
        proxy = self.proxy
        proxy.in_flight -= 1
        route = self.route
        assert route is not None
        conn = self.conn
        proxy.metrics.observe(route.name, conn.status or 499, proxy._clock() - self.started)
        conn.finish()


def _response_head(ex: _Exchange, head: ResponseHead) -> tuple[bytes, bool]:
    """The upstream's response header lines for the client (hop-by-hop ones dropped, the
    echoed ones added), and whether they hold a ``content-length``."""
    block = head.block
    relayed = _RELAYED.get(block)
    if relayed is None:
        relayed = _relayed(block)
        if len(_RELAYED) >= _RELAYED_SIZE:
            _RELAYED.clear()
        _RELAYED[block] = relayed
    kept, sized = relayed
    # the correlation id and trace first (``echo``'s first two), then the rest of ``echo``
    echoed = f"{CORRELATION_HEADER}: {ex.request_id}\r\ntraceparent: {ex.traceparent}\r\n"
    for key, text in ex.echo[2:]:
        echoed += f"{key}: {text}\r\n"
    return kept + echoed.encode("latin-1"), sized


#: ``_relayed`` of the header blocks seen lately: an upstream repeats its headers (all but
#: ``Date`` are usually the same, and that one changes once a second), and a hit costs a
#: dictionary look-up instead of searching the lines
_RELAYED: dict[bytes, tuple[bytes, bool]] = {}
_RELAYED_SIZE = 256


def _relayed(block: bytes) -> tuple[bytes, bool]:
    """``block`` without the lines the proxy drops, and whether it has a ``content-length``."""
    lowered = b"\n" + block.lower()  # searched in C: no pair per header
    pieces: list[bytes] = []
    at = 0
    for found in _DROPPED_LINE.finditer(lowered):
        start, end = found.span()  # the line is block[start:end], see _DROPPED_LINE
        pieces.append(block[at:start])
        at = end
    if not pieces:
        return block, b"\ncontent-length:" in lowered
    connection = lowered.find(b"\nconnection:")
    if connection >= 0 and (
        lowered[connection + 12 : lowered.find(b"\r", connection)].strip() not in _PLAIN_CONNECTION
        or lowered.count(b"\nconnection:") > 1
    ):
        kept = _listed_dropped(block)  # names that ``Connection`` lists are hop-by-hop too
        return kept, b"\ncontent-length:" in b"\n" + kept.lower()
    pieces.append(block[at:])
    return b"".join(pieces), b"\ncontent-length:" in lowered


def _listed_dropped(block: bytes) -> bytes:
    """The header lines without the hop-by-hop ones and those that ``Connection`` names."""
    headers = header_pairs(block)
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return b"".join(
        b"%b: %b\r\n" % (name, value)
        for name, value in headers
        if name not in _HOP_BY_HOP_BYTES and name not in named
    )


def _span_kind_server() -> Any:
    from opentelemetry import trace

    return trace.SpanKind.SERVER


def _end_span(span: Any, ex: _Exchange, route: str, status: int) -> None:
    span.update_name(f"{ex.request.method} {route}")
    span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        fail(span, f"HTTP {status}")
    span.end()


async def _pump(body: Body, conn_up: UpstreamConnection, chunked: bool) -> None:
    async for chunk in body:
        conn_up.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn_up.drain()
    if chunked:
        conn_up.write(b"0\r\n\r\n")
