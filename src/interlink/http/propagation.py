"""What rides along every HTTP call, under which header, and how a server reads it back.

Outgoing (every attempt, taken from the current context, so handler code does nothing):

=========================  ===================================================================
``x-request-timeout-ms``   the time this attempt may take, whole milliseconds, rounded down:
                           the lesser of the current deadline's ``remaining()`` and the
                           service's ``attempt_timeout``
``x-request-id``           the correlation id of the current context (``interlink.context``),
                           when there is one; the callee's middleware assigns one otherwise
``traceparent``,           W3C trace context and baggage, through the OpenTelemetry API
``tracestate``, ``baggage``   (``interlink.tracing``); nothing without a span or baggage
=========================  ===================================================================

Incoming (``InterlinkMiddleware``): ``x-request-timeout-ms`` must be a non-negative integer of
at most ``MAX_TIMEOUT_DIGITS`` digits; ``x-request-id`` must pass
``interlink.context.valid_correlation_id``. Anything else is the caller's error (400).
"""

from __future__ import annotations

from interlink.context import CORRELATION_HEADER, DEADLINE_HEADER
from interlink.errors import DeadlineExceeded
from interlink.resilience.deadline import remaining
from interlink.tracing.propagation import inject

__all__ = [
    "CORRELATION_HEADER",
    "DEADLINE_HEADER",
    "MAX_TIMEOUT_DIGITS",
    "MAX_TIMEOUT_MS",
    "attempt_ms",
    "outgoing_headers",
    "parse_timeout_ms",
]

#: Ten digits of milliseconds is over 115 days: a longer value is garbage, not a deadline.
MAX_TIMEOUT_DIGITS = 10
#: The most ``x-request-timeout-ms`` a client sends: what the middleware accepts.
MAX_TIMEOUT_MS = 10**MAX_TIMEOUT_DIGITS - 1
_MAX_TIMEOUT_S = MAX_TIMEOUT_MS / 1000.0


def attempt_ms(attempt_timeout: float | None, what: str) -> int | None:
    """Whole milliseconds this attempt may take: the lesser of the current deadline's remaining
    time and ``attempt_timeout``, rounded down (None when neither is set), and at most
    ``MAX_TIMEOUT_MS``: a longer budget (``deadline(1e8)``) is sent as the longest value the
    callee's middleware accepts, not refused there.

    Rounded down so that the callee never believes it has more time than the caller will wait,
    and so that the clients can reuse one timeout object per value. Raises ``DeadlineExceeded``
    when less than a millisecond is left: the callee would be told 0 ms and refuse the request,
    so it is not sent.
    """
    left = remaining()
    if left is None:
        if attempt_timeout is None:
            return None
        left = attempt_timeout
    elif attempt_timeout is not None and attempt_timeout < left:
        left = attempt_timeout
    ms = int(left * 1000.0) if left < _MAX_TIMEOUT_S else MAX_TIMEOUT_MS
    if ms < 1:
        raise DeadlineExceeded(f"no time left to call {what}", 0.0)
    return ms


def outgoing_headers(
    headers: dict[str, str] | None,
    correlation: str | None,
    ms: int | None,
    trace_context: object | None = None,
) -> dict[str, str]:
    """A new dict: ``headers`` (lower-case names) plus the propagated headers, keeping any the
    caller set explicitly; ``trace_context`` (default: the current context) supplies the
    trace, e.g. one with the attempt's client span."""
    out = {} if headers is None else headers.copy()
    if correlation is not None and CORRELATION_HEADER not in out:
        out[CORRELATION_HEADER] = correlation
    if ms is not None:
        out[DEADLINE_HEADER] = str(ms)
    inject(out, trace_context)
    return out


def parse_timeout_ms(raw: str) -> int:
    """The milliseconds in an ``x-request-timeout-ms`` value; ValueError when it is not a
    non-negative integer of at most ``MAX_TIMEOUT_DIGITS`` digits."""
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_TIMEOUT_DIGITS:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"'{DEADLINE_HEADER}' must be a non-negative integer of milliseconds "
            f"(at most {MAX_TIMEOUT_DIGITS} digits): {shown!r}"
        )
    return int(value)
