"""The public surface of ``interlink`` is pinned: adding or removing a name is a decision."""

from __future__ import annotations

import interlink

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    """__all__ is exactly the expected names, sorted."""
    assert interlink.__all__ == EXPECTED
    assert sorted(interlink.__all__) == interlink.__all__


RESILIENCE = [
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


def test_resilience_surface_is_pinned() -> None:
    """interlink.resilience: the policies, the pipeline and the deadline, with their types."""
    import interlink.resilience

    assert interlink.resilience.__all__ == RESILIENCE
    assert all(getattr(interlink.resilience, name) is not None for name in RESILIENCE)


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


SAGA = [
    "COMPENSATION_RETRY",
    "STEP_RETRY",
    "CommandGuard",
    "CommandRefused",
    "CorruptSagaState",
    "InvalidReply",
    "Orchestrator",
    "OwnershipLost",
    "SagaDefinition",
    "SagaError",
    "SagaNotFound",
    "SagaState",
    "SagaStats",
    "SagaStatus",
    "SagaStore",
    "Send",
    "Step",
    "StepContext",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StepUnavailable",
    "reply_body",
    "reply_headers",
]

OUTBOX = ["PUBLISH_RETRY", "Outbox", "OutboxRelay", "OutboxStore", "RelayStats", "RelayTarget"]


def test_saga_and_outbox_surfaces_are_pinned() -> None:
    """interlink.saga and interlink.outbox export exactly their documented names, sorted."""
    import interlink.outbox
    import interlink.saga

    assert interlink.saga.__all__ == SAGA
    assert interlink.outbox.__all__ == OUTBOX
    for module in (interlink.saga, interlink.outbox):
        for name in module.__all__:
            assert getattr(module, name) is not None


def test_saga_errors_share_the_interlink_base() -> None:
    """Every error interlink.saga exports derives from InterlinkError."""
    import interlink.saga

    errors = [
        getattr(interlink.saga, n)
        for n in interlink.saga.__all__
        if isinstance(getattr(interlink.saga, n), type)
        and issubclass(getattr(interlink.saga, n), BaseException)
    ]
    assert errors
    assert all(issubclass(e, interlink.InterlinkError) for e in errors)


DISCOVERY = [
    "Address",
    "Balancer",
    "Endpoint",
    "InvalidURLError",
    "Lease",
    "NoInstancesError",
    "OutlierOptions",
    "Picked",
    "Picker",
    "Pool",
    "Registry",
    "Resolver",
    "ResolverStats",
    "ServiceInstance",
    "Snapshot",
]


def test_discovery_surface_is_pinned() -> None:
    """interlink.discovery exports exactly its documented names, sorted, and its errors share
    the InterlinkError base (a bad URL is also a ValueError)."""
    from interlink import discovery
    from interlink.errors import InterlinkError

    assert discovery.__all__ == DISCOVERY
    assert all(getattr(discovery, name) is not None for name in DISCOVERY)
    assert issubclass(discovery.NoInstancesError, InterlinkError)
    assert issubclass(discovery.InvalidURLError, InterlinkError)
    assert issubclass(discovery.InvalidURLError, ValueError)


HTTP = [
    "AsyncClient",
    "AsyncServiceClient",
    "Client",
    "Downstream",
    "InterlinkMiddleware",
    "Response",
    "ServiceClient",
    "ServiceConfig",
    "ServicePolicies",
    "load_config",
]


def test_http_surface_is_pinned() -> None:
    """interlink.http exports exactly its documented names, sorted."""
    from interlink import http

    assert http.__all__ == HTTP
    assert all(getattr(http, name) is not None for name in HTTP)


GRPC = [
    "BREAKER_FAILURES",
    "OWN_REFUSALS",
    "AioServerInterceptor",
    "ClientInterceptor",
    "DirectChannel",
    "ResolvedChannel",
    "ServerInterceptor",
    "Service",
    "StatusError",
    "aio_channel",
    "aio_interceptors",
    "channel",
    "direct_channel",
    "idempotent_methods",
    "is_retryable",
    "resolved_channel",
    "service",
    "should_fall_back",
]


def test_grpc_surface_is_pinned() -> None:
    """interlink.grpc exports exactly its documented names (ruff's isort order), and its error
    shares the InterlinkError base."""
    from interlink import grpc
    from interlink.errors import InterlinkError

    assert grpc.__all__ == GRPC
    assert all(getattr(grpc, name) is not None for name in GRPC)
    assert issubclass(grpc.StatusError, InterlinkError)
