"""The per-service pipeline: defaults, validation, and idempotency from the .proto."""

from __future__ import annotations

import grpc
import pytest
from grpc_helpers import GET_MENU, PLACE_ORDER, food_pb2

from interlink import CircuitBreaker, Pipeline, RetryBudget
from interlink.errors import NoInstancesError
from interlink.grpc import BREAKER_FAILURES, Service, idempotent_methods, service
from interlink.grpc.policy import (
    DEFAULT_BACKOFF,
    DEFAULT_BREAKER_WINDOW,
    DEFAULT_COOLDOWN,
    DEFAULT_JITTER,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_MINIMUM_CALLS,
    DEFAULT_MULTIPLIER,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
)
from interlink.grpc.status import classify
from interlink.http import ServicePolicies


def test_defaults_are_pinned() -> None:
    """The documented defaults, the same as interlink.http's."""
    assert (DEFAULT_TIMEOUT, DEFAULT_RETRIES) == (10.0, 2)
    assert (DEFAULT_BACKOFF, DEFAULT_MULTIPLIER, DEFAULT_MAX_BACKOFF) == (0.025, 2.0, 0.25)
    assert DEFAULT_JITTER == "full"
    http = ServicePolicies()
    assert (http.backoff, http.multiplier, http.max_backoff, http.jitter) == (
        DEFAULT_BACKOFF,
        DEFAULT_MULTIPLIER,
        DEFAULT_MAX_BACKOFF,
        DEFAULT_JITTER,
    )
    assert (DEFAULT_BREAKER_WINDOW, DEFAULT_MINIMUM_CALLS, DEFAULT_COOLDOWN) == (10.0, 20, 5.0)


def test_default_service_has_a_deadline_retry_and_breaker_named_after_it() -> None:
    """service("menu"): a 10 s deadline, then retry (with a budget) and breaker named menu."""
    svc = service("menu")
    described = svc.pipeline.describe()
    assert svc.timeout == 10.0
    assert [d["policy"] for d in described] == ["retry", "breaker"]
    assert {d["name"] for d in described} == {"menu"}
    assert described[0]["retries"] == 2
    assert described[0]["budget"]["ratio"] == 0.2  # type: ignore[index]


def test_call_timeout_is_the_sooner_of_the_callers_and_the_services() -> None:
    """A caller may shorten the deadline, never extend it; None means "no opinion"."""
    svc = service("menu", timeout=2.0)
    assert (svc.call_timeout(None), svc.call_timeout(5.0), svc.call_timeout(0.5)) == (2.0, 2.0, 0.5)
    assert service("menu", timeout=None).call_timeout(5.0) == 5.0


def test_budget_and_breaker_are_shared_by_whoever_passes_them() -> None:
    """One budget and one breaker per downstream, used by every call's pipeline."""
    budget = RetryBudget(name="menu")
    breaker = CircuitBreaker("menu", record_exceptions=BREAKER_FAILURES)
    svc = service("menu", budget=budget, breaker=breaker)
    assert breaker in svc.pipeline.policies
    retry = svc.pipeline.policies[0]
    assert retry.budget is budget  # type: ignore[attr-defined]


def test_no_timeout_and_no_retries_leave_only_the_breaker() -> None:
    """timeout=None and retries=0 drop those policies."""
    described = service("menu", timeout=None, retries=0).pipeline.describe()
    assert [d["policy"] for d in described] == ["breaker"]


def test_idempotent_methods_are_read_from_the_proto() -> None:
    """idempotency_level IDEMPOTENT / NO_SIDE_EFFECTS marks a method; PlaceOrder has none."""
    names = idempotent_methods(food_pb2.DESCRIPTOR)
    assert names == {GET_MENU, "/food.v1.MenuService/ListItems", "/food.v1.PricingService/Quote"}
    pricing = food_pb2.DESCRIPTOR.services_by_name["PricingService"]
    assert idempotent_methods(pricing) == {"/food.v1.PricingService/Quote"}


def test_is_idempotent_accepts_bytes_and_a_wildcard() -> None:
    """grpc.aio passes method names as bytes; "*" marks every method."""
    svc = service("menu", idempotent=[GET_MENU])
    assert svc.is_idempotent(GET_MENU.encode())
    assert not svc.is_idempotent(PLACE_ORDER)
    assert service("menu", idempotent=["*"]).is_idempotent(PLACE_ORDER)


def test_bad_timeouts_are_refused_with_their_value() -> None:
    """timeout and attempt_timeout must be positive; the message names them."""
    with pytest.raises(ValueError, match="'timeout' must be a finite number > 0: 0"):
        service("menu", timeout=0)
    with pytest.raises(ValueError, match="'attempt_timeout' must be a finite number > 0: -1"):
        service("menu", attempt_timeout=-1)


def test_negative_retries_are_refused() -> None:
    """retries must be >= 0."""
    with pytest.raises(ValueError, match="'retries' must be"):
        service("menu", retries=-1)


def test_service_needs_a_name_and_a_pipeline() -> None:
    """Service validates what it is built from."""
    with pytest.raises(ValueError, match="'name' must be a non-empty string: ''"):
        Service("", Pipeline())
    with pytest.raises(ValueError, match="'pipeline' must be an interlink Pipeline"):
        Service("menu", object())  # type: ignore[arg-type]


def test_idempotent_methods_refuses_other_objects() -> None:
    """Only protobuf file or service descriptors are read."""
    with pytest.raises(ValueError, match="'descriptors' must be protobuf"):
        idempotent_methods(object())


def test_interceptors_need_a_service() -> None:
    """Passing a Pipeline where a Service belongs fails at construction, naming the parameter."""
    from interlink.grpc import ClientInterceptor, aio_interceptors

    with pytest.raises(ValueError, match=r"'service' must be an interlink\.grpc\.Service"):
        aio_interceptors(Pipeline())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'service' must be an interlink\.grpc\.Service"):
        ClientInterceptor(Pipeline())  # type: ignore[arg-type]


def test_retry_knobs_use_the_package_words() -> None:
    """retries, backoff, multiplier, max_backoff and jitter reach the service's Retry."""
    svc = service("menu", retries=3, backoff=0.01, multiplier=3.0, max_backoff=0.5, jitter="none")
    retry = svc.pipeline.describe()[0]
    assert (retry["retries"], retry["backoff"], retry["multiplier"]) == (3, 0.01, 3.0)
    assert (retry["max_backoff"], retry["jitter"]) == (0.5, "none")


def test_default_breaker_records_downstream_statuses_not_own_refusals() -> None:
    """Now that StatusError is an InterlinkError, the default breaker still opens on
    UNAVAILABLE, and still ignores interlink's own refusals (no instance to call)."""
    svc = service("menu", retries=0)
    breaker = svc.pipeline.policies[-1]
    assert isinstance(breaker, CircuitBreaker)

    def no_instance() -> None:
        raise NoInstancesError("menu", "empty")

    for _ in range(30):
        with pytest.raises(NoInstancesError):
            svc.pipeline.call(no_instance)
    assert breaker.state.value == "closed"

    def unavailable() -> None:
        raise classify(RuntimeError("down"), grpc.StatusCode.UNAVAILABLE, (), idempotent=True)

    outcomes = []
    for _ in range(30):
        try:
            svc.pipeline.call(unavailable)
        except Exception as exc:  # the failures the breaker counts, then its refusals
            outcomes.append(type(exc).__name__)
    assert outcomes[-1] == "CircuitOpenError"
    assert breaker.state.value == "open"
