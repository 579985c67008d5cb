"""The errors the proxy itself answers with, and their JSON body.

Every response the proxy makes up (as opposed to one it relays from an upstream) is
``{"error": ..., "reason": ..., "status": ..., "request_id": ...}`` with a status and a
machine-readable ``reason`` from ``REASONS``. The reason names what went wrong in words a client
can act on (``upstream_connect_refused`` rather than "upstream connect error or disconnect/reset
before headers"); the text never carries a stack trace or an upstream's internals.
"""

from __future__ import annotations

import json

from interlink.errors import InterlinkError

__all__ = ["REASONS", "ProxyError", "error_body"]

#: Every reason the proxy answers with, and its HTTP status.
REASONS: dict[str, int] = {
    "bad_request": 400,
    "ambiguous_length": 400,
    "invalid_path": 400,
    "auth_missing": 401,
    "auth_invalid": 401,
    "auth_expired": 401,
    "auth_not_yet_valid": 401,
    "forbidden": 403,
    "no_route": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "body_too_large": 413,
    "rate_limited": 429,
    "headers_too_large": 431,
    "internal_error": 500,
    "upstream_connect_refused": 502,
    "upstream_reset": 502,
    "upstream_bad_response": 502,
    "circuit_open": 503,
    "no_healthy_instance": 503,
    "bulkhead_full": 503,
    "upstream_pool_full": 503,
    "rate_limit_unavailable": 503,
    "upstream_timeout": 504,
}

_TEXT: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ProxyError(InterlinkError):
    """A request the proxy answers itself: ``reason`` (a key of ``REASONS``) fixes the status.

    ``message`` is the human sentence of the JSON body; ``headers`` are added to the response
    (``Retry-After``, ``WWW-Authenticate``, ``Allow``, ...).
    """

    def __init__(
        self, reason: str, message: str, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"'reason' must be one of {sorted(REASONS)}: {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.status = REASONS[reason]
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def status_text(status: int) -> str:
    """The reason phrase of ``status`` (empty when unknown: HTTP/1.1 allows it)."""
    return _TEXT.get(status, "")


def error_body(error: ProxyError, request_id: str) -> bytes:
    """The JSON body of ``error`` for the request ``request_id``."""
    return json.dumps(
        {
            "error": error.message,
            "reason": error.reason,
            "status": error.status,
            "request_id": request_id,
        },
        separators=(",", ":"),
    ).encode()
