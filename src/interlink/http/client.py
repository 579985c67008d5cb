"""``AsyncClient``: resilient HTTP calls to named services, on aiohttp.

Why aiohttp: measured on this project's benchmark machine against the same loopback server,
bare aiohttp spends ~75 us of client CPU per request at 32 concurrent requests, httpx's
``AsyncClient`` ~1,950 us (encode/httpx#3215) and httpx over an aiohttp transport
(``httpx-aiohttp``) ~250-370 us, as httpx's request and response models cost more than the I/O
under them. The client's own work (policies, propagation, classification) is then small next
to the engine's. ``docs/sync.md`` has the numbers and ``benchmarks/http_client.py`` reproduces
them.

A call: parse the target once; then, per attempt, through the service's pipeline (timeout ->
retry -> hedge -> breaker -> rate limiter -> bulkhead): pick an instance (for
``service://name/...`` targets), compute the attempt's time from the deadline, add the
propagated headers, send, read the whole body, classify. A failure is raised as an internal
``AttemptFailed`` so the breaker and retry see it; at the edge the caller gets the last answer
(a 503 after exhausted retries is returned, like Polly's last outcome), a fallback or stale
answer when configured, or a public error.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from interlink.clock import Clock
from interlink.errors import NoInstancesError
from interlink.http._config import ServicePolicies, load_config
from interlink.http._request import (
    Call,
    Picked,
    Resolver,
    cache_key,
    fallback_answer,
    instance_ok,
    origin_of,
    outcome,
    prepare_parsed,
    split_target,
)
from interlink.http._response import Response
from interlink.http._service import Service, Services
from interlink.http.classify import AttemptFailed, status_failure
from interlink.http.propagation import CORRELATION_HEADER, DEADLINE_HEADER, attempt_ms
from interlink.resilience.deadline import deadline, expired
from interlink.resilience.events import Listener
from interlink.tracing.propagation import api
from interlink.tracing.spans import Spans, context_of, fail

try:
    import aiohttp
    from multidict import CIMultiDict, istr
    from yarl import URL
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError("interlink.http needs aiohttp: pip install 'interlink[http]'") from exc

if TYPE_CHECKING:
    from interlink.http._request import Params

__all__ = ["AsyncClient", "AsyncServiceClient"]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 15.0
_TIMEOUT_CACHE = 256
_TARGET_CACHE = 4096
# header names as multidict keys of their own type, which it need not fold on every insert
_CORRELATION_KEY = istr(CORRELATION_HEADER)
_DEADLINE_KEY = istr(DEADLINE_HEADER)


def _deadline_cancelled() -> bool:
    """Whether the cancellation being handled is the Timeout policy's, at the deadline: the
    deadline has passed and the task was cancelled exactly once (anyone else's cancellation,
    e.g. the caller's or a hedge's, propagates untouched)."""
    if not expired():
        return False
    task = asyncio.current_task()
    return task is not None and task.cancelling() == 1


class _AsyncVerbs:
    """get/post/... and ``request`` as plain functions returning ``_send``'s coroutine, with
    the options spelt out: a verb then costs no coroutine frame of its own and no dict of
    keyword arguments, on every request."""

    __slots__ = ()

    def _send(  # noqa: PLR0917 - internal, positional for speed
        self,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str] | None,
        content: bytes | str | None,
        json: Any,
        timeout: float | None,
        fallback: Any,
    ) -> Coroutine[Any, Any, Response]:  # pragma: no cover - overridden
        raise NotImplementedError

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
    ) -> Coroutine[Any, Any, Response]:
        """Send a request through the target service's policies.

        ``timeout`` shrinks the deadline for this call (never extends the caller's).
        ``fallback``: a ``Response``, or a callable (sync or async) given the error, answering
        when the call fails (a failure answer, an error or a rejection).
        """
        return self._send(method.upper(), url, params, headers, content, json, timeout, fallback)

    def get(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """GET ``url`` (idempotent: retried on failure)."""
        return self._send("GET", url, params, headers, content, json, timeout, fallback)

    def head(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """HEAD ``url`` (idempotent)."""
        return self._send("HEAD", url, params, headers, content, json, timeout, fallback)

    def options(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """OPTIONS ``url`` (idempotent)."""
        return self._send("OPTIONS", url, params, headers, content, json, timeout, fallback)

    def put(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """PUT ``url`` (idempotent)."""
        return self._send("PUT", url, params, headers, content, json, timeout, fallback)

    def delete(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """DELETE ``url`` (idempotent)."""
        return self._send("DELETE", url, params, headers, content, json, timeout, fallback)

    def post(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """POST ``url``: retried only with an ``Idempotency-Key`` header."""
        return self._send("POST", url, params, headers, content, json, timeout, fallback)

    def patch(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """PATCH ``url``: retried only with an ``Idempotency-Key`` header."""
        return self._send("PATCH", url, params, headers, content, json, timeout, fallback)


class AsyncClient(_AsyncVerbs):
    """Call HTTP services with per-service policies and context propagation.

    ``base_url`` joins relative URLs (``"service://menu"`` or ``"http://host:port"``).
    ``policies`` are the defaults for every service; ``services`` and ``config`` (a mapping or a
    JSON/TOML file, see ``load_config``) give named services their own. ``resolver`` picks an
    instance for ``service://name/...`` targets (``interlink.discovery.Resolver``); a service
    configured with a ``url`` needs none. Use ``async with AsyncClient() as client`` or
    ``await client.aclose()``; the connection pool belongs to the event loop of the first call.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        policies: ServicePolicies | None = None,
        services: Mapping[str, ServicePolicies] | None = None,
        config: Mapping[str, Any] | str | Path | None = None,
        resolver: Resolver | None = None,
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
        self._services = Services(
            default,
            configured,
            loaded.urls if loaded else {},
            clock=clock,
            listeners=listeners,
            allow_hedge=True,
        )
        self._resolver = resolver
        self._headers = dict(headers or {})
        self._max_connections = max_connections
        self._keepalive = keepalive
        self._redirects = follow_redirects
        self._clock = clock
        self._spans = Spans(tracer_provider, name="interlink.http")
        self._session: aiohttp.ClientSession | None = None
        self._no_timeout = aiohttp.ClientTimeout(total=None)
        # one timeout object per whole-millisecond budget: a call's first attempt nearly always
        # has the same budget (its service's timeout, less a fraction of a millisecond)
        self._timeouts: dict[int, aiohttp.ClientTimeout] = {}
        # (origin, path) -> (URL text, URL parsed once); services call the same few URLs
        self._targets: dict[tuple[str, str], tuple[str, URL | str]] = {}
        self._otel = api()

    # -- configuration --------------------------------------------------------------------

    def service(
        self,
        name: str,
        *,
        policies: ServicePolicies | None = None,
        url: str | None = None,
    ) -> AsyncServiceClient:
        """The client for service ``name`` (``service://name/...``), with its own policies and
        optionally a fixed ``url`` instead of the resolver. Configure each service once;
        asking again (without different settings) returns a client on the same policies."""
        return AsyncServiceClient(self, self._services.configure(name, policies, url))

    @property
    def services(self) -> list[Service]:
        """The services called or configured so far (their live policies)."""
        return list(self._services)

    # -- calls ----------------------------------------------------------------------------

    def _send(  # noqa: PLR0917 - internal, positional for speed
        self,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str] | None,
        content: bytes | str | None,
        json: Any,
        timeout: float | None,
        fallback: Any,
    ) -> Coroutine[Any, Any, Response]:
        return self._call(None, method, url, params, headers, content, json, timeout, fallback)

    async def _call(  # noqa: PLR0917 - internal, positional for speed
        self,
        service: Service | None,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str] | None,
        content: bytes | str | None,
        json: Any,
        timeout: float | None,  # noqa: ASYNC109 - shrinks the deadline, see request()
        fallback: Any,
    ) -> Response:
        """A whole call; ``service`` is given by a service client, whose ``url`` is then a
        path of that service. Parsing happens here, not in ``_send``, so that a bad target is
        raised where the call is awaited, as from any coroutine."""
        if service is None:
            name, origin, path = split_target(url, self.base_url)
            service = self._services.get(name)
        else:  # a path of the service: what splitting "service://name" + url would give
            origin, path = None, url if url.startswith("/") else "/" + url
        call = prepare_parsed(
            method, service.name, origin, path, self._headers, params, headers, content, json
        )
        pipeline = service.pipeline if call.resend else service.unsafe_pipeline
        try:
            if timeout is None:
                response: Response = await pipeline.acall(self._attempt, service, call)
            else:
                with deadline(timeout, clock=self._clock):
                    response = await pipeline.acall(self._attempt, service, call)
        except Exception as exc:
            return await self._recover(service, call, exc, fallback)
        if service._stale is not None and response.status < 300:
            key = cache_key(call)
            if key is not None:
                service.remember(key, response)
        return response

    async def _recover(
        self, service: Service, call: Call, exc: Exception, fallback: Any
    ) -> Response:
        failed, error = outcome(exc, call)
        if fallback is not None:
            answer = fallback_answer(fallback, error)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]
        key = cache_key(call)
        if key is not None:
            stale = service.stale(key, error)
            if stale is not None:
                return stale.copy_with(source="stale")  # type: ignore[no-any-return]
        if failed is not None:
            return failed
        if error is not exc:
            error.__suppress_context__ = True
        raise error

    async def _attempt(self, service: Service, call: Call) -> Response:  # noqa: PLR0915 - flat hot path
        """One attempt: pick, send, read, classify. Raises ``AttemptFailed`` on a failure."""
        picked: Picked | None = None
        origin = call.origin or service.url
        if origin is None:
            picked = await self._pick(call.service)
            origin = origin_of(picked.instance)
        target = self._targets.get((origin, call.path)) or self._target_of(origin, call.path)
        url = target[0]
        ok = False
        span = None
        try:
            ms = attempt_ms(service.policies.attempt_timeout, url)  # sent to the callee
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
            otel = self._otel
            if otel is not None:  # tracing.inject(), inlined: usually an empty context
                trace_context = otel.get_current() if span is None else context_of(span)
                if trace_context:
                    otel.inject(headers, context=trace_context)
            session = self._session or self._open()
            try:
                # Arm aiohttp's own timer only when nothing else ends the attempt in time: the
                # service's Timeout policy already cancels the call at the deadline (with a
                # timer shared by many calls), and a second timer per request costs more CPU
                # than the rest of interlink's work together. Its cancellation is turned into
                # this attempt's timeout below, so the breaker and the retry see it all the
                # same. No timer is the session's default, so it is passed only to arm one.
                if ms is not None and not (
                    service.enforces_deadline and ms < service.attempt_ms_floor
                ):
                    timer = True
                    raw = await session.request(
                        call.method,
                        target[1],
                        headers=headers,
                        data=call.body,
                        timeout=self._timeouts.get(ms) or self._timeout_of(ms),
                        allow_redirects=self._redirects,
                    )
                else:
                    timer = False
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
            status = raw.status
            response = Response(status, raw.headers, content, url=url, method=call.method)
            if span is not None:
                span.set_attribute("http.response.status_code", status)
            if status >= 500 or status in {429, 408}:  # is_failure_status, inlined
                raise status_failure(
                    status,
                    raw.headers.get("Retry-After"),
                    target=url,
                    response=response,
                    resend=call.resend,
                    max_retry_after=service.policies.max_retry_after,
                )
            ok = True
            return response
        except BaseException as exc:
            ok = instance_ok(exc)
            if span is not None:
                fail(span, exc if not isinstance(exc, AttemptFailed) else str(exc))
            raise
        finally:
            if span is not None:
                span.end()
            if picked is not None:
                picked.done(ok)

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

    async def _pick(self, service: str) -> Picked:
        resolver = self._resolver
        if resolver is None:
            raise ValueError(
                f"'service://{service}' needs a resolver, or a url: "
                f"client.service({service!r}, url='http://host:port')"
            )
        try:
            return resolver.pick(service)
        except NoInstancesError as exc:
            apick = getattr(resolver, "apick", None)
            if exc.reason != "unresolved" or apick is None:
                raise
        picked: Picked = await apick(service)
        return picked

    # -- lifecycle ------------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=self._keepalive,
        )
        # No cookie jar: a service client must not carry one caller's cookies into another's call.
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=self._no_timeout
        )
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class AsyncServiceClient(_AsyncVerbs):
    """Requests to one service: paths are relative to ``service://name``.

    ``service`` holds the live policies (``.breaker``, ``.budget``, ``.pipeline``...).
    """

    __slots__ = ("_client", "service")

    def __init__(self, client: AsyncClient, service: Service) -> None:
        self._client = client
        self.service = service

    @property
    def name(self) -> str:
        """The service's name."""
        return self.service.name

    def _send(  # noqa: PLR0917 - internal, positional for speed
        self,
        method: str,
        url: str,
        params: Params | None,
        headers: Mapping[str, str] | None,
        content: bytes | str | None,
        json: Any,
        timeout: float | None,
        fallback: Any,
    ) -> Coroutine[Any, Any, Response]:
        # a path of this service, as ``service://name`` + url would give it; a full URL is the
        # client's to parse
        service = None if "://" in url else self.service
        return self._client._call(
            service, method, url, params, headers, content, json, timeout, fallback
        )
