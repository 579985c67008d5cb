"""The engine-independent half of a call: parse the target, prepare the request once, and turn
the pipeline's outcome into what the caller gets. Both clients share it; only the I/O differs.
"""

from __future__ import annotations

import asyncio
import functools
import json as _json
from collections.abc import Mapping
from typing import Any, TypedDict
from urllib.parse import urlencode

from interlink.context import correlation_id
from interlink.discovery.resolver import Address
from interlink.errors import BudgetExhausted, DeadlineExceeded, HTTPStatusError, TransportError
from interlink.http._response import Response
from interlink.http.classify import AttemptFailed, may_resend

__all__ = [
    "Call",
    "RequestOptions",
    "outcome",
    "prepare",
    "prepare_parsed",
    "split_target",
]


Params = Mapping[str, str | int | float | list[str] | tuple[str, ...]]


class RequestOptions(TypedDict, total=False):
    """Keyword options of every request method."""

    params: Params | None
    headers: Mapping[str, str] | None
    content: bytes | str | None
    json: Any
    timeout: float | None
    fallback: Any


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


class Call:
    """One request as the attempts see it; prepared once, whatever the number of attempts."""

    __slots__ = (
        "body",
        "correlation",
        "failed",
        "headers",
        "method",
        "origin",
        "path",
        "resend",
        "service",
    )

    correlation: str | None
    failed: list[Address] | None
    """The instances that failed an attempt of this call: a retry's pick avoids them."""

    def __init__(  # noqa: PLR0917 - internal, built in one place
        self,
        method: str,
        service: str,
        origin: str | None,
        path: str,
        headers: dict[str, str] | None,
        body: bytes | None,
    ) -> None:
        self.method = method
        self.service = service
        self.origin = origin
        self.path = path
        self.headers = headers
        self.body = body
        self.resend = may_resend(method, headers)
        self.correlation = correlation_id()
        self.failed = None


def prepare(  # noqa: PLR0917 - internal, called by the two clients only
    method: str,
    url: str,
    base_url: str | None,
    default_headers: Mapping[str, str] | None,
    params: Params | None,
    headers: Mapping[str, str] | None,
    content: bytes | str | None,
    json: Any,
) -> Call:
    """Parse and normalise a request: upper-case method, lower-case header names, body bytes."""
    service, origin, path = split_target(url, base_url)
    return prepare_parsed(
        method.upper(), service, origin, path, default_headers, params, headers, content, json
    )


def prepare_parsed(  # noqa: PLR0917 - internal, called by the two clients only
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
    """``prepare`` for a target already split (``method`` already upper case)."""
    if params:
        path, hash_, fragment = path.partition("#")  # the query goes before a fragment
        path += ("&" if "?" in path else "?") + urlencode(params, doseq=True) + hash_ + fragment
    if not (default_headers or headers) and json is None and content is None:
        return Call(method, service, origin, path, None, None)  # the common GET
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
    return Call(method, service, origin, path, merged or None, body)


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


def response_of(exc: BaseException) -> Response | None:
    """The failure answer carried by ``exc`` (or by the failure behind a ``BudgetExhausted``)."""
    if isinstance(exc, BudgetExhausted):
        exc = exc.__cause__ or exc
    if type(exc) is AttemptFailed and isinstance(exc.response, Response):
        return exc.response
    return None


def public_error(exc: Exception, service: str) -> Exception:
    """The error a caller sees for ``exc``: internal ``AttemptFailed`` outcomes become
    ``HTTPStatusError``, ``TransportError`` or ``DeadlineExceeded``; others are unchanged."""
    if type(exc) is not AttemptFailed:
        if isinstance(exc, BudgetExhausted) and type(exc.__cause__) is AttemptFailed:
            exc.__cause__ = public_error(exc.__cause__, service)
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


def outcome(exc: Exception, call: Call) -> tuple[Response | None, Exception]:
    """``(last failure answer or None, public error)`` for a call the pipeline gave up on."""
    return response_of(exc), public_error(exc, call.service)


def cache_key(call: Call) -> str | None:
    """The stale-if-error key of a call: its target, for GETs only."""
    if call.method != "GET":
        return None
    return f"{call.origin or 'service://' + call.service}{call.path}"


def fallback_answer(fallback: Any, error: Exception) -> Any:
    """A fixed ``Response`` is the answer; a callable is called with the public error."""
    if isinstance(fallback, Response):
        return fallback.copy_with(source="fallback")
    return fallback(error)
