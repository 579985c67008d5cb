"""What counts as a failure of the callee, what may be sent again, and how long it asked us to wait.

The rules, in one place (Envoy's ``retry_on: 5xx,reset,connect-failure,retriable-4xx`` and
gRPC's retry policy, narrowed to what is safe by default):

* **Failures** (counted by the breaker, retried when the request may be sent again): connection
  errors, timeouts, every 5xx, ``408 Request Timeout`` and ``429 Too Many Requests``.
* **Not failures**: every other status, 4xx included. A 404 or a 422 is the caller's mistake
  or a normal answer; counting it would let a buggy client open the breaker of a healthy
  service and cut everybody else off.
* **May be sent again**: idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) and any
  request with an ``Idempotency-Key`` header. A POST without a key is never retried, not even
  after a connection error: the client cannot tell whether the server ran it.
* ``Retry-After`` on a 429 or 503 (seconds or an HTTP date) replaces the backoff for that
  retry; interlink's ``Retry`` gives up instead when the wait would pass the deadline, and the
  client does not retry when the server asks for more than ``max_retry_after``.

A failure travels through the resilience pipeline as an ``AttemptFailed`` raised inside the
attempt, carrying the response when there is one (Polly's outcome, as an exception so the
pipeline's breaker and retry see it); the client unwraps it at the edge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = [
    "IDEMPOTENCY_HEADER",
    "IDEMPOTENT_METHODS",
    "AttemptFailed",
    "is_failure_status",
    "is_retryable",
    "may_resend",
    "parse_retry_after",
]

#: Methods that may be sent twice with the effect of once (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
#: The header that makes any request safe to send again (the IETF httpapi draft's name).
IDEMPOTENCY_HEADER = "idempotency-key"

_RETRY_AFTER_STATUSES = (429, 503)


def is_failure_status(status: int) -> bool:
    """True for statuses that say the callee is unwell or overloaded: 5xx, 408 and 429."""
    return status >= 500 or status == 429 or status == 408  # noqa: PLR1714 - fastest form


def may_resend(method: str, headers: Mapping[str, str] | None = None) -> bool:
    """Whether a request may be sent again: an idempotent method or an Idempotency-Key.

    ``headers`` must have lower-case names (the clients normalise them).
    """
    if method in IDEMPOTENT_METHODS:
        return True
    return headers is not None and IDEMPOTENCY_HEADER in headers


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None
    when absent or unreadable. A date in the past gives 0. ``now``: Unix time (for tests)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; an offset-less date is read as such
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return delay if delay > 0 else 0.0


class AttemptFailed(Exception):
    """One attempt failed: the internal outcome the pipeline's breaker and retry act on.

    ``kind`` is ``"status"`` (``response`` holds the failure answer), ``"timeout"``,
    ``"connect"`` or ``"transport"``; ``retryable`` is False when the request may not be sent
    again; ``retry_after`` (seconds) is the server's requested wait, which ``Retry`` honours.
    Not part of the public API: callers get the response, or a public error, at the edge.
    """

    __slots__ = ("kind", "response", "retry_after", "retryable", "target")

    def __init__(
        self,
        kind: str,
        target: str,
        *,
        response: object = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(kind, target)
        self.kind = kind
        self.target = target
        self.response = response
        self.retryable = retryable
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = getattr(self.response, "status", None)
        if status is not None:
            return f"HTTP {status} from {self.target}"
        return f"{self.kind} failure calling {self.target}"


def is_retryable(exc: BaseException) -> bool:
    """The predicate the clients give ``Retry``: only a retryable ``AttemptFailed``.

    Everything else (an open breaker, a full bulkhead, no instance, the caller's own bug) is
    not retried.
    """
    return type(exc) is AttemptFailed and exc.retryable


def status_failure(
    status: int,
    retry_after_header: str | None,
    *,
    target: str,
    response: object,
    resend: bool,
    max_retry_after: float,
) -> AttemptFailed:
    """The ``AttemptFailed`` for a failure status, with the server's ``Retry-After`` read."""
    retry_after = None
    if status in _RETRY_AFTER_STATUSES and retry_after_header:
        retry_after = parse_retry_after(retry_after_header)
    retryable = resend
    if retry_after is not None and (
        retry_after > max_retry_after or not math.isfinite(retry_after)
    ):
        retryable = False  # the server wants longer than we are willing to hold the caller
    return AttemptFailed(
        "status", target, response=response, retryable=retryable, retry_after=retry_after
    )
