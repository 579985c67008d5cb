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

This module holds the client's set-up, its call around the pipeline and its lifecycle; the
attempt (the hot path on aiohttp) is ``AsyncClient``'s base class in ``_async_attempt`` and the
verbs, shared with ``AsyncServiceClient``, are the base class in ``_async_verbs``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from interlink.clock import Clock
from interlink.discovery.resolver import Picker
from interlink.http._async_attempt import AsyncAttempts
from interlink.http._async_verbs import AsyncVerbs
from interlink.http._config import ServicePolicies, load_config
from interlink.http._request import (
    Call,
    cache_key,
    fallback_answer,
    outcome,
    prepare_parsed,
    split_target,
)
from interlink.http._response import Response
from interlink.http._service import Service, Services
from interlink.resilience.deadline import deadline
from interlink.resilience.events import Listener
from interlink.tracing.propagation import api
from interlink.tracing.spans import Spans

try:
    import aiohttp
    from yarl import URL
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError("interlink.http needs aiohttp: pip install 'interlink[http]'") from exc

if TYPE_CHECKING:
    from interlink.http._request import Params

__all__ = ["AsyncClient", "AsyncServiceClient"]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE = 15.0


class AsyncClient(AsyncAttempts, AsyncVerbs):
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

    # -- lifecycle ------------------------------------------------------------------------

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


class AsyncServiceClient(AsyncVerbs):
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
