"""``Client``: the blocking twin of ``AsyncClient``, on httpx's sync ``Client``.

Why httpx here and aiohttp for async: the CPU problem of encode/httpx#3215 is in httpx's async
path (anyio and its connection pool under concurrency); blocking code serves one request per
thread, where httpx's sync client costs ~300 us of CPU per request on the benchmark machine,
small next to a thread's own overhead, and httpx is already in the ``http`` extra with a
thread-safe pool, timeouts and HTTP/1.1 keep-alive. Same policies, same propagation, same
classification as ``AsyncClient`` (shared in ``_request``, ``_service``, ``classify``); only the
I/O differs. Hedging needs concurrency inside one call, so a sync client refuses
``hedge_delay``. Timeouts are cooperative (interlink's ``Timeout``): each attempt's socket
timeout is taken from the remaining deadline, so no attempt outlives it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Unpack

from interlink.clock import Clock
from interlink.discovery.resolver import Picked, Picker
from interlink.http._config import ServicePolicies, load_config
from interlink.http._request import (
    Call,
    RequestOptions,
    cache_key,
    fallback_answer,
    instance_ok,
    origin_of,
    outcome,
    prepare,
)
from interlink.http._response import Response
from interlink.http._service import Service, Services
from interlink.http.classify import AttemptFailed, is_failure_status, status_failure
from interlink.http.propagation import attempt_ms, outgoing_headers
from interlink.resilience.deadline import deadline
from interlink.resilience.events import Listener
from interlink.tracing.spans import Spans, context_of, fail

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError("interlink.http.Client needs httpx: pip install 'interlink[http]'") from exc

if TYPE_CHECKING:
    from interlink.http._request import Params

__all__ = ["Client", "ServiceClient"]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 15.0


class _Verbs:
    """get/post/... as thin calls of ``request``."""

    def request(
        self, method: str, url: str, **options: Unpack[RequestOptions]
    ) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError

    def get(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """GET ``url`` (idempotent: retried on failure)."""
        return self.request("GET", url, **options)

    def head(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """HEAD ``url`` (idempotent)."""
        return self.request("HEAD", url, **options)

    def options(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """OPTIONS ``url`` (idempotent)."""
        return self.request("OPTIONS", url, **options)

    def put(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """PUT ``url`` (idempotent)."""
        return self.request("PUT", url, **options)

    def delete(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """DELETE ``url`` (idempotent)."""
        return self.request("DELETE", url, **options)

    def post(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """POST ``url``: retried only with an ``Idempotency-Key`` header."""
        return self.request("POST", url, **options)

    def patch(self, url: str, **options: Unpack[RequestOptions]) -> Response:
        """PATCH ``url``: retried only with an ``Idempotency-Key`` header."""
        return self.request("PATCH", url, **options)


class Client(_Verbs):
    """Blocking HTTP calls with per-service policies; the arguments are ``AsyncClient``'s.

    Thread-safe: one client (one pool, one breaker and budget per service) serves every thread.
    """

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
        self._services = Services(
            default,
            configured,
            loaded.urls if loaded else {},
            clock=clock,
            listeners=listeners,
            allow_hedge=False,
        )
        self._resolver = resolver
        self._headers = dict(headers or {})
        self._clock = clock
        self._spans = Spans(tracer_provider, name="interlink.http")
        self._http = httpx.Client(
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=keepalive,
            ),
            follow_redirects=follow_redirects,
            timeout=None,
        )

    def service(
        self,
        name: str,
        *,
        policies: ServicePolicies | None = None,
        url: str | None = None,
    ) -> ServiceClient:
        """The client for service ``name``; see ``AsyncClient.service``."""
        return ServiceClient(self, self._services.configure(name, policies, url))

    @property
    def services(self) -> list[Service]:
        """The services called or configured so far (their live policies)."""
        return list(self._services)

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
    ) -> Response:
        """Send a request through the target service's policies; see ``AsyncClient.request``
        (here a callable ``fallback`` must be a plain function)."""
        call = prepare(method, url, self.base_url, self._headers, params, headers, content, json)
        service = self._services.get(call.service)
        pipeline = service.pipeline if call.resend else service.unsafe_pipeline
        try:
            if timeout is None:
                response: Response = pipeline.call(self._attempt, service, call)
            else:
                with deadline(timeout, clock=self._clock):
                    response = pipeline.call(self._attempt, service, call)
        except Exception as exc:
            return self._recover(service, call, exc, fallback)
        if service._stale is not None and response.status < 300:
            key = cache_key(call)
            if key is not None:
                service.remember(key, response)
        return response

    def _recover(self, service: Service, call: Call, exc: Exception, fallback: Any) -> Response:
        failed, error = outcome(exc, call)
        if fallback is not None:
            return fallback_answer(fallback, error)  # type: ignore[no-any-return]
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

    def _attempt(self, service: Service, call: Call) -> Response:
        """One attempt: pick, send, read, classify. Raises ``AttemptFailed`` on a failure."""
        picked: Picked | None = None
        origin = call.origin or service.url
        if origin is None:
            if self._resolver is None:
                raise ValueError(
                    f"'service://{call.service}' needs a resolver, or a url: "
                    f"client.service({call.service!r}, url='http://host:port')"
                )
            failed = call.failed
            picked = (
                self._resolver.pick(call.service, failed)
                if failed
                else self._resolver.pick(call.service)
            )
            origin = origin_of(picked.instance)
        url = origin + call.path
        ok = False
        span = None
        try:
            ms = attempt_ms(service.policies.attempt_timeout, url)
            if self._spans.tracer() is not None:
                span = self._spans.start_client(
                    call.method, {"http.request.method": call.method, "url.full": url}
                )
            headers = outgoing_headers(
                call.headers, call.correlation, ms, None if span is None else context_of(span)
            )
            try:
                raw = self._http.request(
                    call.method,
                    url,
                    headers=headers,
                    content=call.body,
                    timeout=None if ms is None else ms / 1000.0,
                )
            except httpx.TimeoutException as exc:
                raise AttemptFailed("timeout", url, retryable=call.resend) from exc
            except httpx.ConnectError as exc:
                raise AttemptFailed("connect", url, retryable=call.resend) from exc
            except httpx.TransportError as exc:
                raise AttemptFailed("transport", url, retryable=call.resend) from exc
            status = raw.status_code
            response = Response(status, raw.headers, raw.content, url=url, method=call.method)
            if span is not None:
                span.set_attribute("http.response.status_code", status)
            if is_failure_status(status):
                raise status_failure(
                    status,
                    raw.headers.get("retry-after"),
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
                if not ok:  # a retry of this call goes elsewhere while it can
                    if call.failed is None:
                        call.failed = []
                    call.failed.append(picked.instance)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ServiceClient(_Verbs):
    """Blocking requests to one service: paths are relative to ``service://name``."""

    __slots__ = ("_client", "_prefix", "service")

    def __init__(self, client: Client, service: Service) -> None:
        self._client = client
        self.service = service
        self._prefix = f"service://{service.name}"

    @property
    def name(self) -> str:
        """The service's name."""
        return self.service.name

    def request(self, method: str, url: str, **options: Unpack[RequestOptions]) -> Response:
        """``client.request(method, "service://name" + url, ...)``."""
        if "://" not in url:
            url = self._prefix + ("" if url.startswith("/") else "/") + url
        return self._client.request(method, url, **options)
