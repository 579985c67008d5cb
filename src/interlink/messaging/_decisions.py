"""What the consumer does with a delivery: ack, retry after a delay, or dead-letter (pure core).

A module of its own because the decisions depend on the core ``Retry`` policy (asked for the
backoff, so the formula stays in one place) and on nothing of the wire format; ``envelope``
re-exports every name, next to the data they decide about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from interlink.resilience.retry import Retry

__all__ = ["ACK", "Decision", "decide_failure", "decide_poison", "error_type_of"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the consumer does with a delivery: ``ack``, ``retry`` after ``delay`` seconds,
    or ``dead_letter`` with ``reason`` and ``error_type``."""

    action: Literal["ack", "retry", "dead_letter"]
    delay: float = 0.0
    reason: str = ""
    error_type: str | None = None


#: The decision for a handled (or already processed) message.
ACK: Final = Decision("ack")


def error_type_of(exc: BaseException) -> str:
    """``module.QualName`` of the error, as stored in a dead letter."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def decide_poison(error: str, error_type: str) -> Decision:
    """A message that cannot be decoded or validated: to the DLQ at once, no retries
    (it would fail the same way every time, and block what is behind it)."""
    return Decision("dead_letter", reason=error, error_type=error_type)


def decide_failure(
    exc: BaseException, *, attempt: int, max_deliveries: int, retry: Retry
) -> Decision:
    """The handler failed delivery number ``attempt`` (1 for the first) with ``exc``.

    Dead-letter once ``max_deliveries`` is reached or ``retry`` gives up (the error is not
    retryable, its attempts or budget are spent); otherwise retry after the delay ``retry``
    schedules for retry number ``attempt - 1``. The previous delay is not known across
    deliveries (each may run in another process), so decorrelated jitter draws from its
    first range every time; the other jitters depend on the attempt number only.
    """
    if attempt >= max_deliveries:
        return Decision(
            "dead_letter",
            reason=f"{_reason(exc)} (after {attempt} deliveries)",
            error_type=error_type_of(exc),
        )
    try:
        delay = retry.next_delay(attempt - 1, exc, 0.0)
    except Exception as given_up:  # Retry gives up by raising (exc itself, or BudgetExhausted)
        cause = given_up
        return Decision(
            "dead_letter",
            reason=f"{_reason(cause)} (not retried after {attempt} deliveries)",
            error_type=error_type_of(exc),
        )
    return Decision("retry", delay=delay)
