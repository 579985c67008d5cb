"""The HTTP clients: ``AsyncClient`` (aiohttp) and ``Client`` (httpx), on one shared base.

A call, in either client: parse the target once (``service://name/path``, ``http://host/path``
or a path joined to ``base_url``) and prepare the request once (``Call``); then, per attempt,
through the service's pipeline (timeout -> retry -> hedge -> breaker -> rate limiter ->
bulkhead): pick an instance (``service://`` targets without a fixed ``url``), compute the
attempt's time from the deadline, add the propagated headers, send, read the whole body,
classify. A failure is raised as an internal ``AttemptFailed`` so that the breaker and the retry
see it; at the edge the caller gets the last answer (a 503 after exhausted retries is returned,
like Polly's last outcome), a fallback or stale answer when configured, or a public error.

The shape is httpx's ``BaseClient``: ``BaseClient`` holds what does not depend on the engine
(configuration, the per-service policies and their service clients, request preparation,
classification of an answer, the give-up path, the arguments); ``AsyncClient`` and ``Client``
hold only their engine's call, attempt and lifecycle, and ``ServiceClientBase`` the service
clients' path handling. The verbs (``get``, ``post``...) are made once each by ``_verb``, one
signature for all of them, generic in what a call returns: a coroutine for the async clients
(a verb is a plain function returning the call's coroutine, so it costs no coroutine frame of
its own), a ``Response`` for the blocking ones. Both clients hand a call's options to one
``_send`` as one tuple (``Given``).

One interlink attempt is exactly one request on the wire. aiohttp resends an idempotent
request once by itself when a connection drops before the answer (RFC 9112's advice for
browsers; ``ClientSession._retry_connection``, with no public switch: aio-libs/aiohttp#10790),
which the retry, its budget and the breaker would never see. ``AsyncClient`` turns that resend
off; see ``_no_resend_session``. The blocking client bounds the whole attempt (connect, headers
and body) by its deadline, not each socket read: every socket operation of an attempt waits at
most what is left of it, so a server trickling its answer one byte at a time, on a new or a
reused connection, is cut off at the deadline (``_BoundedStream``).

Why aiohttp for async: measured on this project's benchmark machine against the same loopback
server, bare aiohttp spends ~75 us of client CPU per request at 32 concurrent requests, httpx's
``AsyncClient`` ~1,950 us (encode/httpx#3215) and httpx over an aiohttp transport ~250-370 us.
Why httpx for blocking code: that CPU problem is in httpx's async path; blocking code serves one
request per thread, where httpx's sync client costs ~300 us per request, and it has a
thread-safe pool. ``docs/sync.md`` has the numbers; ``benchmarks/http_client.py`` reproduces
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json as _json
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import urlencode

from interlink._closing import AsyncClosing, Closing
from interlink.clock import Clock
from interlink.context import correlation_id
from interlink.discovery.resolver import Address, Picked, Picker
from interlink.errors import (
    BudgetExhausted,
    DeadlineExceeded,
    HTTPStatusError,
    NoInstancesError,
    TransportError,
)
from interlink.http._policies import Downstream, Downstreams, ServicePolicies, load_config
from interlink.http._response import Response
from interlink.http.classify import AttemptFailed, is_failure_status, may_resend, status_failure
from interlink.http.propagation import (
    CORRELATION_HEADER,
    DEADLINE_HEADER,
    attempt_ms,
    outgoing_headers,
)
from interlink.resilience.deadline import deadline, expired
from interlink.resilience.events import Listener
from interlink.resilience.pipeline import Pipeline
from interlink.tracing.propagation import inject, inject_span
from interlink.tracing.spans import Spans, context_of, fail

try:
    import aiohttp
    import httpcore
    import httpx
    from multidict import CIMultiDict, istr
    from yarl import URL
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError(
        "interlink.http needs aiohttp and httpx: pip install 'interlink[http]'"
    ) from exc

__all__ = [
    "AsyncClient",
    "AsyncServiceClient",
    "BaseClient",
    "Client",
    "ServiceClient",
    "ServiceClientBase",
]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 15.0

# ------------------------------------------------------------------- instances and requests


Params = Mapping[str, str | int | float | list[str] | tuple[str, ...]]


@functools.lru_cache(maxsize=4096)  # services call the same few URLs over and over
def split_target(url: str, base_url: str | None) -> tuple[str, str | None, str]:
    """``(service, origin, path)``: ``service://menu/a?b`` gives ``("menu", None, "/a?b")``,
    ``http://h:1/a`` gives ``("h:1", "http://h:1", "/a")``; a relative ``url`` joins
    ``base_url``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        if base_url is None:
            raise ValueError(f"'url' must be absolute (no base_url is set): {url!r}")
        return split_target(base_url.rstrip("/") + ("" if url.startswith("/") else "/") + url, None)
    end = len(rest)
    for mark in "/?#":
        at = rest.find(mark)
        if 0 <= at < end:
            end = at
    authority, path = rest[:end], rest[end:]
    if not authority:
        raise ValueError(f"'url' names no host or service: {url!r}")
    if not path.startswith("/"):
        path = "/" + path
    scheme = scheme.lower()
    if scheme == "service":
        return authority, None, path
    if scheme in ("http", "https"):
        return authority, f"{scheme}://{authority}", path
    raise ValueError(f"'url' scheme must be http, https or service: {url!r}")


@dataclasses.dataclass(slots=True, eq=False)
class Call:
    """One request as the attempts see it; prepared once, whatever the number of attempts."""

    method: str
    service: str
    origin: str | None
    path: str
    headers: dict[str, str] | None
    body: bytes | None
    resend: bool
    """Whether an attempt may be sent again (``may_resend``)."""
    correlation: str | None
    failed: list[Address] | None = None
    """The instances that failed an attempt of this call: a retry's pick avoids them."""


def prepare(  # noqa: PLR0917 - internal, called by the clients only
    method: str,
    service: str,
    origin: str | None,
    path: str,
    default_headers: Mapping[str, str] | None,
    params: Params | None,
    headers: Mapping[str, str] | None,
    content: bytes | str | None,
    json: Any,
) -> Call:
    """A request for a target already split (``method`` upper case): the query added, header
    names lower-cased, the body as bytes."""
    if params:
        path, hash_, fragment = path.partition("#")  # the query goes before a fragment
        path += ("&" if "?" in path else "?") + urlencode(params, doseq=True) + hash_ + fragment
    if not (default_headers or headers) and json is None and content is None:
        resend = may_resend(method, None)
        return Call(method, service, origin, path, None, None, resend, correlation_id())
    merged: dict[str, str] = {}
    if default_headers:
        merged.update((k.lower(), v) for k, v in default_headers.items())
    if headers:
        merged.update((k.lower(), v) for k, v in headers.items())
    body: bytes | None
    if json is not None:
        if content is not None:
            raise ValueError("'content' and 'json' are exclusive: pass one body")
        body = _json.dumps(json, separators=(",", ":")).encode()
        merged.setdefault("content-type", "application/json")
    elif isinstance(content, str):
        body = content.encode()
    else:
        body = content
    sent = merged or None
    return Call(
        method, service, origin, path, sent, body, may_resend(method, sent), correlation_id()
    )


def origin_of(instance: Address) -> str:
    """``protocol://host:port`` of a picked instance, an IPv6 host in brackets."""
    host = f"[{instance.host}]" if ":" in instance.host else instance.host
    return f"{instance.protocol}://{host}:{instance.port}"


def instance_ok(exc: BaseException) -> bool:
    """Whether an attempt that raised ``exc`` still speaks for its instance (``done(True)``):
    cancelled (by the caller, or a hedge that answered first), or answered 429/408 (shedding
    load). Passive ejection counts only connection errors, timeouts and 5xx, like Envoy's
    consecutive_5xx; the breaker and retry still see every ``AttemptFailed``."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    if not isinstance(exc, AttemptFailed) or exc.kind != "status":
        return False
    return getattr(exc.response, "status", 500) < 500


def public_error(exc: Exception) -> Exception:
    """The error a caller sees for ``exc``: internal ``AttemptFailed`` outcomes become
    ``HTTPStatusError``, ``TransportError`` or ``DeadlineExceeded``; others are unchanged."""
    if type(exc) is not AttemptFailed:
        if isinstance(exc, BudgetExhausted) and type(exc.__cause__) is AttemptFailed:
            exc.__cause__ = public_error(exc.__cause__)
        return exc
    cause = exc.__cause__
    if isinstance(exc.response, Response):
        public: Exception = HTTPStatusError(exc.response, exc.response.status, exc.response.url)
    elif exc.kind == "timeout":
        public = DeadlineExceeded(f"calling {exc.target} timed out")
    else:
        detail = "" if cause is None else (str(cause) or type(cause).__name__)
        public = TransportError(exc.target, exc.kind, detail)
    public.__cause__ = cause
    return public


def failure_answer(exc: BaseException) -> Response | None:
    """The failure answer carried by ``exc`` (or by the failure behind a ``BudgetExhausted``)."""
    if isinstance(exc, BudgetExhausted):
        exc = exc.__cause__ or exc
    if type(exc) is AttemptFailed and isinstance(exc.response, Response):
        return exc.response
    return None


def cache_key(call: Call) -> str | None:
    """The stale-if-error key of a call: its target, for GETs only."""
    if call.method != "GET":
        return None
    return f"{call.origin or 'service://' + call.service}{call.path}"


# -------------------------------------------------------------------------------- the verbs

R = TypeVar("R")
S = TypeVar("S", bound="ServiceClientBase[Any]")
R_co = TypeVar("R_co", covariant=True)

#: What a caller passed besides the method and the URL, as ``request`` hands it on:
#: ``(params, headers, content, json, timeout, fallback)``.
Given = tuple[Params | None, Mapping[str, str] | None, bytes | str | None, Any, float | None, Any]


class _Verb(Protocol[R_co]):
    """The signature of every verb (``client.get(url, ...)``...), written once."""

    def __call__(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> R_co: ...


def _verb(method: str, doc: str) -> Any:
    """The verb ``method`` as a plain method: ``request(method, ...)`` without upper-casing."""

    def verb(
        self: _Verbs[Any],
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Any:
        return self._send(method, url, (params, headers, content, json, timeout, fallback), None)

    verb.__name__ = method.lower()
    verb.__qualname__ = f"_Verbs.{verb.__name__}"
    verb.__doc__ = doc
    return verb


class _Verbs(Generic[R]):
    """``request`` and get/head/options/put/delete/post/patch (``request`` with the method
    given): each hands what it was given, as one ``Given`` tuple, to ``_send``, whose result
    (``R``) it returns."""

    __slots__ = ()

    def _send(self, method: str, url: str, given: Given, downstream: Downstream | None) -> R:
        """A whole call; ``downstream`` is given by a service client to its client, whose
        ``url`` is then a path of that service."""
        raise NotImplementedError  # pragma: no cover - every client defines it

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> R:
        """Send a request through the target service's policies.

        ``timeout`` shrinks the deadline for this call (never extends the caller's).
        ``fallback``: a ``Response``, or a callable given the public error (sync, or async for
        the async clients), answering when the call fails (a failure answer, an error or a
        rejection).
        """
        given = (params, headers, content, json, timeout, fallback)
        return self._send(method.upper(), url, given, None)

    get: _Verb[R] = _verb("GET", "GET ``url`` (idempotent: retried on failure).")
    head: _Verb[R] = _verb("HEAD", "HEAD ``url`` (idempotent).")
    options: _Verb[R] = _verb("OPTIONS", "OPTIONS ``url`` (idempotent).")
    put: _Verb[R] = _verb("PUT", "PUT ``url`` (idempotent).")
    delete: _Verb[R] = _verb("DELETE", "DELETE ``url`` (idempotent).")
    post: _Verb[R] = _verb("POST", "POST ``url``: retried only with an ``Idempotency-Key`` header.")
    patch: _Verb[R] = _verb(
        "PATCH", "PATCH ``url``: retried only with an ``Idempotency-Key`` header."
    )


# ---------------------------------------------------------------------------- the shared base


class BaseClient(_Verbs[R], Generic[R, S]):
    """What both clients share: their arguments (documented on ``AsyncClient``),
    configuration, the per-service policies, request preparation, the classification of an
    answer and the give-up path. Not used directly."""

    #: whether the client runs attempts side by side (``hedge_delay``)
    _hedges: bool = True
    #: the class of the clients ``service()`` returns
    _service_client: type[S]

    def __init__(
        self,
        base_url: str | None = None,
        *,
        policies: ServicePolicies | None = None,
        services: Mapping[str, ServicePolicies] | None = None,
        config: Mapping[str, Any] | str | Path | None = None,
        resolver: Picker | None = None,
        headers: Mapping[str, str] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive: float = DEFAULT_KEEPALIVE,
        follow_redirects: bool = False,
        tracer_provider: object | None = None,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"'max_connections' must be >= 1: {max_connections!r}")
        loaded = None if config is None else load_config(config)
        default = policies or (loaded.default if loaded else ServicePolicies())
        configured = dict(loaded.services) if loaded else {}
        configured.update(services or {})
        self.base_url = base_url
        self._downstreams = Downstreams(
            default,
            configured,
            loaded.urls if loaded else {},
            clock=clock,
            listeners=listeners,
            allow_hedge=self._hedges,
        )
        self._resolver = resolver
        self._headers = dict(headers or {})
        self._max_connections = max_connections
        self._keepalive = keepalive
        self._redirects = follow_redirects
        self._clock = clock
        self._spans = Spans(tracer_provider, name="interlink.http")
        self._start()

    def _start(self) -> None:
        """Set up the engine's own state (the connection pool, caches)."""
        raise NotImplementedError  # pragma: no cover - every client defines it

    @property
    def downstreams(self) -> list[Downstream]:
        """The services called or configured so far (their live policies)."""
        return list(self._downstreams)

    def service(
        self,
        name: str,
        *,
        policies: ServicePolicies | None = None,
        url: str | None = None,
    ) -> S:
        """The client for service ``name`` (``service://name/...``), with its own policies and
        optionally a fixed ``url`` instead of the resolver. Configure each service once;
        asking again (without different settings) returns a client on the same policies."""
        return self._service_client(self, self._downstreams.configure(name, policies, url))

    def _prepare(
        self, downstream: Downstream | None, method: str, url: str, given: Given
    ) -> tuple[Downstream, Call, Pipeline]:
        """The call's service, request and pipeline (a request that may not be sent twice
        goes through the one that never resends); ``downstream`` is given by a service
        client, whose ``url`` is then a path of that service."""
        if downstream is None:
            name, origin, path = split_target(url, self.base_url)
            downstream = self._downstreams.get(name)
        else:  # a path of the service: what splitting "service://name" + url would give
            origin, path = None, url if url.startswith("/") else "/" + url
        params, headers, content, json = given[:4]
        call = prepare(
            method, downstream.name, origin, path, self._headers, params, headers, content, json
        )
        return downstream, call, downstream.pipeline if call.resend else downstream.unsafe_pipeline

    @staticmethod
    def _answered(downstream: Downstream, call: Call, response: Response) -> Response:
        """A call's answer, remembered first when the service serves stale answers."""
        if downstream.policies.stale_if_error is not None and response.status < 300:
            key = cache_key(call)
            if key is not None:
                downstream.remember(key, response)
        return response

    def _recover(
        self, downstream: Downstream, call: Call, failure: Exception, fallback: Any
    ) -> Any:
        """What a failed call answers: the fallback's answer (an awaitable from an async
        fallback), else what ``_given_up`` answers or raises."""
        if fallback is not None:
            return _fallback_answer(fallback, public_error(failure))
        return self._given_up(downstream, call, failure)

    def _no_resolver(self, service: str) -> ValueError:
        return ValueError(
            f"'service://{service}' needs a resolver, or a url: "
            f"client.service({service!r}, url='http://host:port')"
        )

    @staticmethod
    def _answer(  # noqa: PLR0917 - internal, positional for speed
        downstream: Downstream,
        call: Call,
        url: str,
        span: Any,
        status: int,
        headers: Mapping[str, str],
        content: bytes,
    ) -> Response:
        """An attempt's answer, noted on its span; a failure answer (5xx, 408, 429) is raised
        as its ``AttemptFailed``."""
        response = Response(status, headers, content, url=url, method=call.method)
        if span is not None:
            span.set_attribute("http.response.status_code", status)
        if is_failure_status(status):
            raise status_failure(
                status,
                headers.get("retry-after"),
                target=url,
                response=response,
                resend=call.resend,
                max_retry_after=downstream.policies.max_retry_after,
            )
        return response

    @staticmethod
    def _given_up(downstream: Downstream, call: Call, exc: Exception) -> Response:
        """What a call the pipeline gave up on answers without a fallback: a fresh stale answer,
        else the last failure answer; else the public error is raised."""
        answer = failure_answer(exc)  # before public_error, which rewrites exc's cause
        error = public_error(exc)
        key = cache_key(call)
        if key is not None:
            stale = downstream.stale(key, error)
            if stale is not None:
                return stale.copy_with(source="stale")  # type: ignore[no-any-return]
        if answer is not None:
            return answer
        if error is not exc:
            error.__suppress_context__ = True
        raise error


class ServiceClientBase(_Verbs[R]):
    """What both service clients share: the verbs, for paths of one service."""

    __slots__ = ("_client", "downstream")

    def __init__(self, client: BaseClient[R, Any], downstream: Downstream) -> None:
        self._client = client
        self.downstream = downstream

    @property
    def name(self) -> str:
        """The service's name."""
        return self.downstream.name

    def _send(self, method: str, url: str, given: Given, downstream: Downstream | None) -> R:
        # a path of this service, as ``service://name`` + url would give it; a full URL is the
        # client's to parse
        downstream = None if "://" in url else self.downstream
        return self._client._send(method, url, given, downstream)


def _attempt_over(call: Call, span: Any, picked: Picked | None, exc: BaseException | None) -> None:
    """An attempt ended (``exc`` None: it answered): end its span, report the outcome to the
    picked instance, and remember a failed instance so that the call's next pick avoids it."""
    ok = exc is None or instance_ok(exc)
    if span is not None:
        if exc is not None:
            fail(span, exc if not isinstance(exc, AttemptFailed) else str(exc))
        span.end()
    if picked is not None:
        picked.done(ok)
        if not ok:  # a retry of this call goes elsewhere while it can
            if call.failed is None:
                call.failed = []
            call.failed.append(picked.instance)


def _attempt_answered(call: Call, span: Any, picked: Picked | None, response: Response) -> Response:
    """An attempt answered ``response``: ``_attempt_over`` when there is a span or an instance
    to tell."""
    if span is not None or picked is not None:
        _attempt_over(call, span, picked, None)
    return response


def _fallback_answer(fallback: Any, error: Exception) -> Any:
    """A fixed ``Response`` is the answer; a callable is called with the public error."""
    if isinstance(fallback, Response):
        return fallback.copy_with(source="fallback")
    return fallback(error)


# ------------------------------------------------------------------------------ AsyncClient

_TIMEOUT_CACHE = 256
_TARGET_CACHE = 4096
# header names as multidict keys of their own type, which it need not fold on every insert
_CORRELATION_KEY = istr(CORRELATION_HEADER)
_DEADLINE_KEY = istr(DEADLINE_HEADER)

#: Whether this aiohttp has the session attribute that turns its own resend off (it has since
#: 3.9; read only after this check). Without it, the public ``_refuse_resend`` middleware does.
RESEND_SWITCH = "_retry_connection" in getattr(aiohttp.ClientSession, "ATTRS", ())


class _NotResent(aiohttp.ClientConnectionError):
    """The connection dropped before the answer; raised instead of aiohttp's own error so that
    aiohttp does not resend the request (interlink's retry decides)."""


async def _refuse_resend(
    request: aiohttp.ClientRequest,
    handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    """A client middleware: aiohttp resends only after ``ClientOSError`` (but not a connect
    error) or ``ServerDisconnectedError``, so those leave the handler as ``_NotResent``."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise _NotResent(str(exc) or type(exc).__name__) from exc


def _no_resend_session(resend_switch: bool, **options: Any) -> aiohttp.ClientSession:
    """An aiohttp session that sends each request once: with ``resend_switch``, through the
    session's own attribute (nothing per request); otherwise through a public client middleware
    (one coroutine more per request)."""
    if resend_switch:
        session = aiohttp.ClientSession(**options)
        session._retry_connection = False
        return session
    return aiohttp.ClientSession(middlewares=(_refuse_resend,), **options)


def _deadline_cancelled() -> bool:
    """Whether the cancellation being handled is the Timeout policy's, at the deadline: the
    deadline has passed and the task was cancelled exactly once (anyone else's cancellation,
    e.g. the caller's or a hedge's, propagates untouched)."""
    if not expired():
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 1


class AsyncServiceClient(ServiceClientBase[Coroutine[Any, Any, Response]]):
    """Requests to one service: paths are relative to ``service://name``.

    ``downstream`` holds the live policies (``.breaker``, ``.budget``, ``.pipeline``...).
    """

    __slots__ = ()


class AsyncClient(BaseClient[Coroutine[Any, Any, Response], AsyncServiceClient], AsyncClosing):
    """Call HTTP services with per-service policies and context propagation.

    ``base_url`` joins relative URLs (``"service://menu"`` or ``"http://host:port"``).
    ``policies`` are the defaults for every service; ``services`` and ``config`` (a mapping or a
    JSON/TOML file, see ``load_config``) give named services their own. ``resolver`` picks an
    instance for ``service://name/...`` targets (``interlink.discovery.Resolver``); a service
    configured with a ``url`` needs none. Use ``async with AsyncClient() as client`` or
    ``await client.aclose()``; the connection pool belongs to the event loop of the first call.
    """

    def _start(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._no_timeout = aiohttp.ClientTimeout(total=None)
        # one timeout object per whole-millisecond budget: a call's first attempt nearly always
        # has the same budget (its service's timeout, less a fraction of a millisecond)
        self._timeouts: dict[int, aiohttp.ClientTimeout] = {}
        # (origin, path) -> (URL text, URL parsed once); services call the same few URLs
        self._targets: dict[tuple[str, str], tuple[str, URL | str]] = {}

    _service_client = AsyncServiceClient

    async def _send(
        self, method: str, url: str, given: Given, downstream: Downstream | None
    ) -> Response:
        """A whole call. Parsing happens in the coroutine, so that a bad target is raised
        where the call is awaited, as from any coroutine."""
        downstream, call, pipeline = self._prepare(downstream, method, url, given)
        timeout = given[4]
        try:
            if timeout is None:
                response: Response = await pipeline.acall(self._attempt, downstream, call)
            else:
                with deadline(timeout, clock=self._clock):
                    response = await pipeline.acall(self._attempt, downstream, call)
        except Exception as exc:
            failure = exc
        else:
            return self._answered(downstream, call, response)
        answer = self._recover(downstream, call, failure, given[5])
        if inspect.isawaitable(answer):
            answer = await answer
        return answer  # type: ignore[no-any-return]

    async def _attempt(self, downstream: Downstream, call: Call) -> Response:  # noqa: PLR0915 - flat hot path
        """One attempt: pick, send, read, classify. Raises ``AttemptFailed`` on a failure."""
        picked: Picked | None = None
        origin = call.origin or downstream.url
        if origin is None:
            picked = await self._pick(call.service, call.failed)
            origin = origin_of(picked.instance)
        target = self._targets.get((origin, call.path)) or self._target_of(origin, call.path)
        url = target[0]
        span = None
        try:
            ms = attempt_ms(downstream.policies.attempt_timeout, url)  # sent to the callee
            # propagation.outgoing_headers(), inlined, into the multidict aiohttp would
            # otherwise build from a dict
            correlation = call.correlation
            headers: CIMultiDict[str]
            if call.headers is None:
                headers = CIMultiDict()
            else:
                headers = CIMultiDict(call.headers)
                if CORRELATION_HEADER in headers:
                    correlation = None  # the caller's own header wins
            if correlation is not None:
                headers[_CORRELATION_KEY] = correlation
            if ms is not None:
                headers[_DEADLINE_KEY] = str(ms)
            if self._spans.tracer() is not None:
                span = self._spans.start_client(
                    call.method, {"http.request.method": call.method, "url.full": url}
                )
            if span is not None:
                inject_span(headers, span)
            else:
                inject(headers)
            session = self._session or self._open()
            # Arm aiohttp's own timer only when nothing else ends the attempt in time: the
            # service's Timeout policy already cancels the call at the deadline (with a timer
            # shared by many calls), and a second timer per request costs more CPU than the
            # rest of interlink's work together. Its cancellation is turned into this attempt's
            # timeout below, so the breaker and the retry see it all the same. No timer is the
            # session's default, so it is passed only to arm one.
            timer = ms is not None and not (
                downstream.enforces_deadline and ms < downstream.attempt_ms_floor
            )
            try:
                if timer:
                    raw = await session.request(
                        call.method,
                        target[1],
                        headers=headers,
                        data=call.body,
                        timeout=self._timeouts.get(ms) or self._timeout_of(ms),  # type: ignore[arg-type]
                        allow_redirects=self._redirects,
                    )
                else:
                    raw = await session.request(
                        call.method,
                        target[1],
                        headers=headers,
                        data=call.body,
                        allow_redirects=self._redirects,
                    )
                # awaited, not ``async with``: read() releases the connection at the end of the
                # body, and two coroutine frames per request are saved
                try:
                    content = await raw.read()
                except BaseException:
                    raw.close()
                    raise
                if not raw.closed:
                    raw.release()
            except TimeoutError as exc:  # before ClientError: aiohttp's timeouts are both
                raise AttemptFailed("timeout", url, retryable=call.resend) from exc
            except aiohttp.ClientConnectorError as exc:
                raise AttemptFailed("connect", url, retryable=call.resend) from exc
            except aiohttp.ClientError as exc:
                raise AttemptFailed("transport", url, retryable=call.resend) from exc
            except asyncio.CancelledError as exc:
                if not timer and _deadline_cancelled():
                    raise AttemptFailed("timeout", url, retryable=call.resend) from exc
                raise
            response = self._answer(downstream, call, url, span, raw.status, raw.headers, content)
        except BaseException as exc:
            _attempt_over(call, span, picked, exc)
            raise
        return _attempt_answered(call, span, picked, response)

    def _target_of(self, origin: str, path: str) -> tuple[str, URL | str]:
        """The URL of ``origin`` + ``path``, as text and parsed once: aiohttp would parse
        (or at least hash and look up) the text again on every request. Text yarl refuses
        stays text, for aiohttp to refuse with its own error."""
        targets = self._targets
        if len(targets) >= _TARGET_CACHE:
            targets.clear()
        url = origin + path
        parsed: URL | str
        try:
            parsed = URL(url)
        except ValueError:
            parsed = url
        target = targets[origin, path] = (url, parsed)
        return target

    def _timeout_of(self, ms: int) -> aiohttp.ClientTimeout:
        if len(self._timeouts) >= _TIMEOUT_CACHE:
            self._timeouts.clear()
        timeout = self._timeouts[ms] = aiohttp.ClientTimeout(total=ms / 1000.0)
        return timeout

    async def _pick(self, service: str, avoid: list[Address] | None) -> Picked:
        resolver = self._resolver
        if resolver is None:
            raise self._no_resolver(service)
        try:
            return resolver.pick(service, avoid) if avoid else resolver.pick(service)
        except NoInstancesError as exc:
            apick = getattr(resolver, "apick", None)
            if exc.reason != "unresolved" or apick is None:
                raise
        picked: Picked = await (apick(service, avoid) if avoid else apick(service))
        return picked

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=self._keepalive,
        )
        # No cookie jar: a service client must not carry one caller's cookies into another's call.
        self._session = _no_resend_session(
            RESEND_SWITCH,
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._no_timeout,
        )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


# ----------------------------------------------------------------------------------- Client


#: The ``time.monotonic()`` by which the blocking attempt running in this thread must be over.
_ATTEMPT_END: ContextVar[float | None] = ContextVar("interlink_http_attempt_end", default=None)


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` (one socket operation's) cut to what is left of the attempt's time;
    ``late`` is raised when nothing is left."""
    end = _ATTEMPT_END.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise late("the attempt's deadline has passed")
    return left if timeout is None or left < timeout else timeout


class _BoundedStream(httpcore.NetworkStream):
    """A connection's socket whose every operation ends by the deadline of the attempt using
    it: httpx's timeouts bound each read, so a server trickling its answer (headers or body)
    one byte at a time would otherwise hold an attempt for ever. The connection keeps this
    stream when it goes back to the pool, so a reused connection is bounded too."""

    __slots__ = ("_stream",)

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    """httpcore's own blocking sockets, each wrapped in a ``_BoundedStream``."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _BoundedStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's errors as httpx's of the same name (``httpx.ReadTimeout``...), as httpx's
    own transport raises them."""
    try:
        yield
    except Exception as exc:
        public = getattr(httpx, type(exc).__name__, None)
        if (
            type(exc).__module__.startswith("httpcore")
            and isinstance(public, type)
            and issubclass(public, httpx.TransportError)
        ):
            raise public(str(exc)) from exc
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _BoundedTransport(httpx.BaseTransport):
    """httpx's transport for the blocking client, on an httpcore pool of ``_BoundedStream``
    connections (httpx's own ``HTTPTransport`` takes no network backend)."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_BoundedBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=cast("Iterable[bytes]", request.stream),
            extensions=request.extensions,
        )
        with _httpx_errors():
            answer = self._pool.handle_request(core)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(cast("Iterable[bytes]", answer.stream)),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        with _httpx_errors():
            self._pool.close()


class ServiceClient(ServiceClientBase[Response]):
    """Blocking requests to one service: paths are relative to ``service://name``."""

    __slots__ = ()


class Client(BaseClient[Response, ServiceClient], Closing):
    """Blocking HTTP calls with per-service policies; the arguments are ``AsyncClient``'s.

    Thread-safe: one client (one pool, one breaker and budget per service) serves every thread.
    Hedging needs concurrency inside one call, so a ``Client`` refuses ``hedge_delay``; a
    callable ``fallback`` must be a plain function.
    """

    _hedges = False
    _service_client = ServiceClient

    def _start(self) -> None:
        limits = httpx.Limits(
            max_connections=self._max_connections,
            max_keepalive_connections=self._max_connections,
            keepalive_expiry=self._keepalive,
        )
        self._http = httpx.Client(
            transport=_BoundedTransport(limits),
            follow_redirects=self._redirects,
            timeout=None,
        )

    def _send(self, method: str, url: str, given: Given, downstream: Downstream | None) -> Response:
        """A whole call; see ``_Verbs._send``."""
        downstream, call, pipeline = self._prepare(downstream, method, url, given)
        timeout = given[4]
        try:
            if timeout is None:
                response: Response = pipeline.call(self._attempt, downstream, call)
            else:
                with deadline(timeout, clock=self._clock):
                    response = pipeline.call(self._attempt, downstream, call)
        except Exception as exc:
            failure = exc
        else:
            return self._answered(downstream, call, response)
        return self._recover(downstream, call, failure, given[5])  # type: ignore[no-any-return]

    def _attempt(self, downstream: Downstream, call: Call) -> Response:
        """One attempt: pick, send, read, classify. Raises ``AttemptFailed`` on a failure."""
        picked: Picked | None = None
        origin = call.origin or downstream.url
        if origin is None:
            if self._resolver is None:
                raise self._no_resolver(call.service)
            failed = call.failed
            picked = (
                self._resolver.pick(call.service, failed)
                if failed
                else self._resolver.pick(call.service)
            )
            origin = origin_of(picked.instance)
        url = origin + call.path
        span = None
        try:
            ms = attempt_ms(downstream.policies.attempt_timeout, url)
            if self._spans.tracer() is not None:
                span = self._spans.start_client(
                    call.method, {"http.request.method": call.method, "url.full": url}
                )
            headers = outgoing_headers(
                call.headers, call.correlation, ms, None if span is None else context_of(span)
            )
            raw = self._exchange(call, url, headers, ms)
            response = self._answer(downstream, call, url, span, *raw)
        except BaseException as exc:
            _attempt_over(call, span, picked, exc)
            raise
        return _attempt_answered(call, span, picked, response)

    def _exchange(
        self, call: Call, url: str, headers: dict[str, str], ms: int | None
    ) -> tuple[int, httpx.Headers, bytes]:
        """Send and read the whole answer within ``ms`` (None: no limit); raises the attempt's
        ``AttemptFailed`` for a transport failure or a timeout."""
        token = None if ms is None else _ATTEMPT_END.set(time.monotonic() + ms / 1000.0)
        try:
            request = self._http.build_request(
                call.method,
                url,
                headers=headers,
                content=call.body,
                timeout=None if ms is None else ms / 1000.0,
            )
            raw = self._http.send(request, stream=True)
            try:
                content = raw.read()
            finally:
                raw.close()
        except httpx.TimeoutException as exc:
            raise AttemptFailed("timeout", url, retryable=call.resend) from exc
        except httpx.TransportError as exc:
            kind = "connect" if isinstance(exc, httpx.ConnectError) else "transport"
            raise AttemptFailed(kind, url, retryable=call.resend) from exc
        finally:
            if token is not None:
                _ATTEMPT_END.reset(token)
        return raw.status_code, raw.headers, content

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()
