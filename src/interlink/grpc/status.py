"""What a gRPC status means for the caller's policies: retry it? count it against the breaker?

::

    code                 retried                              breaker
    UNAVAILABLE          yes                                  failure
    RESOURCE_EXHAUSTED   yes, after the server's pushback     failure
    ABORTED              only for idempotent methods          success
    DEADLINE_EXCEEDED    only for idempotent methods, and     failure
                         only when a per-attempt timeout
                         (not the call's deadline) ran out
    INTERNAL, UNKNOWN    no                                   failure
    anything else        no (INVALID_ARGUMENT, NOT_FOUND,     success
                         PERMISSION_DENIED, UNAUTHENTICATED,
                         FAILED_PRECONDITION, ...)

The breaker column follows the rule of the HTTP side: only the callee's trouble (down, overloaded,
too slow, crashing) may open the callee's breaker; a caller's mistake (a bad argument, a missing
row, a refused permission) is an answer, and counts as a success. Retries follow gRFC A6: a
status the server could have produced after doing the work (ABORTED, DEADLINE_EXCEEDED) is
retried only where repeating the method is harmless. Server pushback (``grpc-retry-pushback-ms``
in the trailing metadata) replaces the backoff when it is a non-negative integer; any other value
means "do not retry", as A6 specifies.

Outcomes reach interlink's ``Pipeline`` as exceptions raised inside the attempt: ``StatusError``
for a non-OK status, ``DownstreamStatusError`` (a subclass) when the breaker must count it. Build
the policies with ``retry_on=is_retryable`` and ``record_exceptions=BREAKER_FAILURES`` (the
factory ``interlink.grpc.service()`` does) and the pipeline classifies exactly as the table says.
The interceptors unwrap the ``StatusError`` at the edge, so callers still see grpc's own error.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from interlink.errors import (
    BulkheadFull,
    DeadlineExceeded,
    InterlinkError,
    NoInstancesError,
    RateLimited,
    RejectedError,
    _Fields,
)

__all__ = [
    "BREAKER_FAILURES",
    "BREAKER_FAILURE_CODES",
    "IDEMPOTENT_RETRYABLE_CODES",
    "NEVER_RETRIED_CODES",
    "OWN_REFUSALS",
    "PUSHBACK_KEY",
    "RETRYABLE_CODES",
    "DownstreamStatusError",
    "StatusError",
    "classify",
    "is_retryable",
    "pushback",
    "should_fall_back",
    "status_for_exception",
]

S = grpc.StatusCode

#: Retried for every method.
RETRYABLE_CODES = frozenset({S.UNAVAILABLE, S.RESOURCE_EXHAUSTED})
#: Retried only for methods marked idempotent (DEADLINE_EXCEEDED: only a per-attempt timeout).
IDEMPOTENT_RETRYABLE_CODES = frozenset({S.ABORTED, S.DEADLINE_EXCEEDED})
#: Never retried, whatever the method: the same request would get the same answer.
NEVER_RETRIED_CODES = frozenset(
    {
        S.INVALID_ARGUMENT,
        S.NOT_FOUND,
        S.PERMISSION_DENIED,
        S.UNAUTHENTICATED,
        S.FAILED_PRECONDITION,
    }
)
#: The codes that count as a failure of the downstream for its circuit breaker.
BREAKER_FAILURE_CODES = frozenset(
    {S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.INTERNAL, S.UNKNOWN, S.RESOURCE_EXHAUSTED}
)
#: Trailing metadata key of gRFC A6 server pushback, in whole milliseconds.
PUSHBACK_KEY = "grpc-retry-pushback-ms"


@dataclass(eq=False, repr=False)
class StatusError(_Fields):
    """A call ended with a non-OK status; raised inside the pipeline so its policies see it.

    ``error`` is grpc's own exception (``grpc.aio.AioRpcError`` or a sync ``grpc.RpcError``),
    re-raised to the caller once the pipeline gives up. ``retryable`` is the table's verdict for
    this method; ``retry_after`` (seconds) is the server's pushback, which ``Retry`` waits instead
    of its backoff.
    """

    error: BaseException
    code: grpc.StatusCode
    retryable: bool
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"gRPC status {self.code.name}{' (retryable)' if self.retryable else ''}"


class DownstreamStatusError(StatusError):
    """A status that counts against the downstream's circuit breaker (``BREAKER_FAILURE_CODES``)."""


#: ``CircuitBreaker(record_exceptions=BREAKER_FAILURES)``: record exactly the table's failures.
BREAKER_FAILURES: tuple[type[BaseException], ...] = (DownstreamStatusError,)
#: ``CircuitBreaker(ignore_exceptions=OWN_REFUSALS)``: interlink's own refusals (a policy's
#: rejection, no instance to call, no time left) say nothing of the callee: not recorded.
OWN_REFUSALS: tuple[type[BaseException], ...] = (RejectedError, NoInstancesError, DeadlineExceeded)


def is_retryable(exc: BaseException) -> bool:
    """``Retry(retry_on=is_retryable)``: retry a ``StatusError`` the table calls retryable.

    Anything else (interlink's own rejections, programming errors) is not retried.
    """
    return isinstance(exc, StatusError) and exc.retryable


def should_fall_back(exc: BaseException) -> bool:
    """``Fallback(on=should_fall_back)``: answer from the fallback when the downstream could not
    answer (a breaker failure, a rejection by a policy, the deadline, no instance to call),
    never for a caller error
    such as NOT_FOUND, which the caller must see."""
    if isinstance(exc, StatusError):
        return isinstance(exc, DownstreamStatusError)
    return isinstance(exc, InterlinkError)


def pushback(trailing: object) -> tuple[bool, float | None]:
    """Read server pushback from trailing metadata: ``(allowed, seconds)``.

    ``(True, None)`` without the key, ``(True, s)`` for a non-negative integer of ms, and
    ``(False, None)`` for anything else: A6 reads a malformed or negative value as "stop".
    """
    if not trailing:
        return True, None
    for key, value in trailing:  # type: ignore[attr-defined]
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if text.isdigit():
                return True, int(text) / 1000.0
            return False, None
    return True, None


def classify(
    error: BaseException,
    code: grpc.StatusCode,
    trailing: object,
    *,
    idempotent: bool,
    attempt_timeout_hit: bool = False,
) -> StatusError:
    """The ``StatusError`` to raise for ``error`` (grpc's exception carrying ``code``).

    ``attempt_timeout_hit`` says the attempt's gRPC deadline was the per-attempt timeout, shorter
    than the call's: only then can a DEADLINE_EXCEEDED be worth another try.
    """
    if code in RETRYABLE_CODES:
        retryable = True
    elif code is S.ABORTED:
        retryable = idempotent
    elif code is S.DEADLINE_EXCEEDED:
        retryable = idempotent and attempt_timeout_hit
    else:
        retryable = False
    retry_after = None
    if retryable:
        retryable, retry_after = pushback(trailing)
    cls = DownstreamStatusError if code in BREAKER_FAILURE_CODES else StatusError
    return cls(error, code, retryable=retryable, retry_after=retry_after)


def status_for_exception(exc: BaseException) -> tuple[grpc.StatusCode, str, float | None]:
    """How a server answers a handler that raised ``exc``: ``(code, safe details, pushback s)``.

    The details never carry the exception's text or a stack trace (they may hold data the
    caller must not see); the correlation id in the trailing metadata finds the logged error.
    An interlink rejection inside the handler (its own downstream is down) is UNAVAILABLE, a
    local overload RESOURCE_EXHAUSTED, a deadline DEADLINE_EXCEEDED; a downstream's error that
    the handler did not handle is INTERNAL: copying a callee's status upward would tell the
    caller its own request was wrong (NOT_FOUND) or make it retry (UNAVAILABLE) through every
    layer at once.
    """
    if isinstance(exc, DeadlineExceeded):
        return S.DEADLINE_EXCEEDED, "deadline exceeded", None
    if isinstance(exc, StatusError):  # a downstream's status the handler did not handle
        if exc.code is S.DEADLINE_EXCEEDED:
            return S.DEADLINE_EXCEEDED, "deadline exceeded", None
        return S.INTERNAL, "internal error", None
    code = getattr(exc, "code", None)
    if callable(code) and isinstance(exc, grpc.RpcError):
        if code() is S.DEADLINE_EXCEEDED:
            return S.DEADLINE_EXCEEDED, "deadline exceeded", None
        return S.INTERNAL, "internal error", None
    if isinstance(exc, RateLimited):
        return S.RESOURCE_EXHAUSTED, "rate limited", exc.retry_after
    if isinstance(exc, BulkheadFull):
        return S.RESOURCE_EXHAUSTED, "overloaded", None
    if isinstance(exc, InterlinkError):  # breaker open, budget spent, no instance to call
        return S.UNAVAILABLE, "a dependency is unavailable", None
    return S.INTERNAL, "internal error", None
