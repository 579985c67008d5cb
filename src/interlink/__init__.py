"""interlink: resilient service-to-service communication.

The resilience core is re-exported here: ``from interlink import CircuitBreaker, Retry``.
Transports, brokers and apps live in their own subpackages and import their optional
dependencies only when used, so ``import interlink`` pulls in the standard library alone.
"""

from interlink._version import __version__
from interlink.errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpenError,
    DeadlineExceeded,
    InterlinkError,
    RateLimited,
    RejectedError,
)
from interlink.resilience import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Hedge,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    State,
    Timeout,
    deadline,
    expired,
    remaining,
)

__all__ = [
    "BudgetExhausted",
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpenError",
    "DeadlineExceeded",
    "Fallback",
    "Hedge",
    "InterlinkError",
    "Pipeline",
    "RateLimited",
    "RateLimiter",
    "RejectedError",
    "Retry",
    "RetryBudget",
    "State",
    "Timeout",
    "__version__",
    "deadline",
    "expired",
    "remaining",
]
