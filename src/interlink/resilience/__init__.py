"""Resilience policies: one pure state machine each, with thin sync and async front doors.

Every policy here is importable from ``interlink`` directly; this package groups them with
their options, events and the pipeline that composes them.
"""

from interlink.resilience.breaker import BreakerMetrics, BreakerOptions, CircuitBreaker, State
from interlink.resilience.budget import RetryBudget
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.deadline import Deadline, current_deadline, deadline, expired, remaining
from interlink.resilience.fallback import Fallback
from interlink.resilience.hedge import Hedge
from interlink.resilience.pipeline import ORDER, Pipeline
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout

__all__ = [
    "ORDER",
    "BreakerMetrics",
    "BreakerOptions",
    "Bulkhead",
    "CircuitBreaker",
    "Deadline",
    "Fallback",
    "Hedge",
    "Pipeline",
    "RateLimiter",
    "Retry",
    "RetryBudget",
    "State",
    "Timeout",
    "current_deadline",
    "deadline",
    "expired",
    "remaining",
]
