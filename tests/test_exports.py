"""The public surface of ``interlink`` is pinned: adding or removing a name is a decision."""

from __future__ import annotations

import interlink

EXPECTED = [
    "BreakerMetrics",
    "BudgetExhausted",
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpenError",
    "Deadline",
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
    "current_deadline",
    "deadline",
    "expired",
    "remaining",
]


def test_all_is_pinned_and_sorted() -> None:
    """__all__ is exactly the expected names, sorted."""
    assert interlink.__all__ == EXPECTED
    assert sorted(interlink.__all__) == interlink.__all__


def test_every_name_resolves() -> None:
    """Every exported name exists."""
    for name in interlink.__all__:
        assert getattr(interlink, name) is not None


def test_error_tree() -> None:
    """Every rejection and the deadline error share the InterlinkError base."""
    for cls in (
        interlink.CircuitOpenError,
        interlink.BudgetExhausted,
        interlink.DeadlineExceeded,
        interlink.BulkheadFull,
        interlink.RateLimited,
    ):
        assert issubclass(cls, interlink.InterlinkError)
    assert issubclass(interlink.DeadlineExceeded, TimeoutError)
    assert not issubclass(interlink.DeadlineExceeded, interlink.RejectedError)
