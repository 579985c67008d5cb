"""One attempt of an ``AsyncClient`` call, on aiohttp: pick an instance, add the propagated
headers, send, read the whole body, classify. The hot path, with the caches it keeps (parsed
URLs, timeouts) and the session it opens on first use.

A base class of ``AsyncClient`` so that the attempt reads apart from the client's set-up and
its call around the pipeline (``client``). Everything the attempt touches per request is, as
before, a module global here or an attribute of the client; a method found on a base class is
looked up through CPython's type cache like one on the class itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from interlink.discovery.resolver import Picked, Picker
from interlink.errors import NoInstancesError
from interlink.http._request import Call, instance_ok, origin_of
from interlink.http._response import Response
from interlink.http._service import Service
from interlink.http.classify import AttemptFailed, status_failure
from interlink.http.propagation import CORRELATION_HEADER, DEADLINE_HEADER, attempt_ms
from interlink.resilience.deadline import expired
from interlink.tracing.spans import Spans, context_of, fail

try:
    import aiohttp
    from multidict import CIMultiDict, istr
    from yarl import URL
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError("interlink.http needs aiohttp: pip install 'interlink[http]'") from exc

if TYPE_CHECKING:
    from interlink.tracing.propagation import _Api

__all__ = ["AsyncAttempts"]

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


class AsyncAttempts:
    """The attempt half of ``AsyncClient``; the attributes are set by ``AsyncClient.__init__``."""

    _resolver: Picker | None
    _max_connections: int
    _keepalive: float
    _redirects: bool
    _spans: Spans
    _session: aiohttp.ClientSession | None
    _no_timeout: aiohttp.ClientTimeout
    _timeouts: dict[int, aiohttp.ClientTimeout]
    _targets: dict[tuple[str, str], tuple[str, URL | str]]
    _otel: _Api | None

    async def _attempt(self, service: Service, call: Call) -> Response:  # noqa: PLR0915 - flat hot path
        """One attempt: pick, send, read, classify. Raises ``AttemptFailed`` on a failure."""
        picked: Picked | None = None
        origin = call.origin or service.url
        if origin is None:
            picked = await self._pick(call.service, call.failed)
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
                if not ok:  # a retry of this call goes elsewhere while it can
                    if call.failed is None:
                        call.failed = []
                    call.failed.append(picked.instance)

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

    async def _pick(self, service: str, avoid: list[Any] | None) -> Picked:
        resolver = self._resolver
        if resolver is None:
            raise ValueError(
                f"'service://{service}' needs a resolver, or a url: "
                f"client.service({service!r}, url='http://host:port')"
            )
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
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=self._no_timeout
        )
        return self._session
