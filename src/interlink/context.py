"""The request context that rides along every call: correlation id (and, through
``interlink.resilience.deadline``, the deadline).

Both live in ``contextvars`` so that handler code never passes them around: a server middleware
sets them from the incoming request, every outgoing call (HTTP, gRPC, broker message) reads them
and forwards them under documented names. Trace context is OpenTelemetry's own context and is
handled by ``interlink.tracing``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "CORRELATION",
    "CORRELATION_HEADER",
    "DEADLINE_HEADER",
    "MAX_CORRELATION_ID_LENGTH",
    "correlation_id",
    "new_correlation_id",
    "use_correlation_id",
    "valid_correlation_id",
]

#: The header (and gRPC metadata key, and message header) carrying the correlation id.
CORRELATION_HEADER = "x-request-id"
#: The header carrying the caller's remaining deadline, in whole milliseconds.
DEADLINE_HEADER = "x-request-timeout-ms"
#: Longer ids are refused: an id ends up in every log line and span of the request.
MAX_CORRELATION_ID_LENGTH = 128

_ID_CHARS = re.compile(r"[A-Za-z0-9._:/+=@-]+")

#: The variable behind ``correlation_id()`` and ``use_correlation_id()``. Transports read and set
#: it directly on their per-call paths (a consumer sets one per message without a reset: each
#: message runs in a task of its own); application code should use the functions.
CORRELATION: ContextVar[str | None] = ContextVar("interlink_correlation_id", default=None)


def correlation_id() -> str | None:
    """The correlation id of the request being handled, or None outside one."""
    return CORRELATION.get()


def new_correlation_id() -> str:
    """A fresh id (32 hex characters) for a request that arrived without one."""
    return uuid.uuid4().hex


def valid_correlation_id(value: str) -> bool:
    """Ids are 1-128 printable characters from a conservative set (no spaces, no quotes):
    they are echoed into headers and logs, so anything else is refused, not escaped."""
    return 0 < len(value) <= MAX_CORRELATION_ID_LENGTH and bool(_ID_CHARS.fullmatch(value))


@contextmanager
def use_correlation_id(value: str | None = None) -> Iterator[str]:
    """Make ``value`` (or a new id) the correlation id for the block."""
    cid = value if value is not None else new_correlation_id()
    if not valid_correlation_id(cid):
        raise ValueError(
            f"'correlation_id' must be 1-{MAX_CORRELATION_ID_LENGTH} characters of "
            f"[A-Za-z0-9._:/+=@-]: {cid[:40]!r}"
        )
    token = CORRELATION.set(cid)
    try:
        yield cid
    finally:
        CORRELATION.reset(token)
