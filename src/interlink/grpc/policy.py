"""One downstream gRPC service: the pipeline every call to it goes through, and which methods
may be repeated.

A ``Service`` is built once per downstream (``service("menu")``) and shared by every channel,
stub and task that calls it, so the service has one circuit breaker and one retry budget however
many callers it has: the breaker sees all the evidence, and the budget bounds the extra load that
all the retries together add.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from random import Random
from typing import Any

from interlink.clock import Clock
from interlink.resilience import _validate as v
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.budget import RetryBudget
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.events import Listener
from interlink.resilience.fallback import Fallback
from interlink.resilience.hedge import Hedge
from interlink.resilience.pipeline import Pipeline
from interlink.resilience.retry import Retry

from .status import BREAKER_FAILURES, OWN_REFUSALS, is_retryable

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BREAKER_WINDOW",
    "DEFAULT_COOLDOWN",
    "DEFAULT_JITTER",
    "DEFAULT_MAX_BACKOFF",
    "DEFAULT_MINIMUM_CALLS",
    "DEFAULT_MULTIPLIER",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "Service",
    "idempotent_methods",
    "service",
]

#: Seconds a whole call may take, retries included, when the caller sets no deadline.
DEFAULT_TIMEOUT = 10.0
#: Retries after the first attempt (three tries in all), within the budget.
DEFAULT_RETRIES = 2
#: First backoff, its growth per retry, the cap of the exponential schedule (seconds) and the
#: jitter: Envoy's, and interlink.http's ``ServicePolicies`` defaults.
DEFAULT_BACKOFF = 0.025
DEFAULT_MULTIPLIER = 2.0
DEFAULT_MAX_BACKOFF = 0.25
DEFAULT_JITTER = "full"
#: The default breaker's window (s), minimum calls and cooldown (s): interlink.http's defaults.
DEFAULT_BREAKER_WINDOW = 10.0
DEFAULT_MINIMUM_CALLS = 20
DEFAULT_COOLDOWN = 5.0

# protobuf's MethodOptions.IdempotencyLevel: 1 NO_SIDE_EFFECTS, 2 IDEMPOTENT
_REPEATABLE_LEVELS = (1, 2)


@dataclass(frozen=True, slots=True)
class Service:
    """A downstream service: its ``name``, the ``pipeline`` each call runs through, the
    ``idempotent`` methods (full names ``/package.Service/Method``, or ``"*"`` for all) that may
    be retried on ABORTED and on a per-attempt timeout, that ``attempt_timeout``, and
    ``timeout``: the deadline (read on ``clock``) a call gets when its caller set a longer one or
    none. The deadline is interlink's own (``interlink.resilience.deadline``), enforced by gRPC
    on every attempt and by ``Retry`` before every backoff; the pipeline needs no ``Timeout``,
    whose second timer would race gRPC's and could end a call with a different error.

    Build it with ``service()``, which classifies statuses for the pipeline; a hand-made
    ``Pipeline`` must use ``Retry(retry_on=is_retryable)`` and
    ``CircuitBreaker(record_exceptions=BREAKER_FAILURES)`` for the same classification.
    """

    name: str
    pipeline: Pipeline
    idempotent: frozenset[str] = field(default_factory=frozenset)
    attempt_timeout: float | None = None
    timeout: float | None = None
    clock: Clock = time.monotonic

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"'name' must be a non-empty string: {self.name!r}")
        if not isinstance(self.pipeline, Pipeline):
            raise ValueError(f"'pipeline' must be an interlink Pipeline: {self.pipeline!r}")
        if self.attempt_timeout is not None:
            v.positive("attempt_timeout", self.attempt_timeout)
        if self.timeout is not None:
            v.positive("timeout", self.timeout)
        object.__setattr__(self, "idempotent", frozenset(self.idempotent))

    def call_timeout(self, caller: float | None) -> float | None:
        """The deadline for one call: the sooner of the caller's ``timeout=`` and ours."""
        if caller is None or (self.timeout is not None and self.timeout < caller):
            return self.timeout
        return caller

    def is_idempotent(self, method: str | bytes) -> bool:
        """Whether ``method`` (``/package.Service/Method``) may be repeated safely."""
        if isinstance(method, bytes):
            method = method.decode("ascii", "replace")
        return method in self.idempotent or "*" in self.idempotent


def service(
    name: str,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    attempt_timeout: float | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    multiplier: float = DEFAULT_MULTIPLIER,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    jitter: str = DEFAULT_JITTER,
    budget: RetryBudget | None = None,
    breaker: CircuitBreaker | None = None,
    bulkhead: Bulkhead | None = None,
    hedge: Hedge | None = None,
    fallback: Fallback | None = None,
    idempotent: Iterable[str] = (),
    clock: Clock = time.monotonic,
    rng: Random | None = None,
    listeners: Iterable[Listener] = (),
) -> Service:
    """A ``Service`` with the policies a gRPC caller wants by default.

    - ``timeout``: the call's whole budget, retries included (None: only the caller's deadline);
      a deadline already in force that is sooner wins, so deadlines shrink along a chain; it is
      a deadline (``Service.timeout``), not a ``Timeout`` policy: gRPC enforces it;
    - ``retries`` with ``backoff`` growing by ``multiplier`` up to ``max_backoff``, with
      ``jitter`` (``Retry``'s words, and ``ServicePolicies``' in ``interlink.http``), drawn from
      ``budget`` (default ``RetryBudget(0.2, 10, 10)``: retries add at most 20 % load, floor
      10/s), only for statuses the table in ``interlink.grpc.status`` calls retryable;
    - ``breaker`` (default: 50 % failures of at least 20 calls in 10 s open it for 5 s)
      counting only ``BREAKER_FAILURE_CODES``; pass your own, built with
      ``record_exceptions=BREAKER_FAILURES``, to tune it;
    - optional ``bulkhead``, ``hedge`` (async only) and ``fallback`` (a ``Fallback`` with
      ``on=should_fall_back`` answers only when the downstream could not).
    """
    if budget is None:
        budget = RetryBudget(name=name, clock=clock)
    if breaker is None:
        breaker = CircuitBreaker(
            name,
            window=DEFAULT_BREAKER_WINDOW,
            minimum_calls=DEFAULT_MINIMUM_CALLS,
            cooldown=DEFAULT_COOLDOWN,
            record_exceptions=BREAKER_FAILURES,
            ignore_exceptions=OWN_REFUSALS,
            clock=clock,
            listeners=listeners,
        )
    retry = None
    if v.at_least("retries", retries, 0):
        retry = Retry(
            retries,
            backoff=backoff,
            multiplier=multiplier,
            max_backoff=max_backoff,
            jitter=jitter,
            retry_on=is_retryable,
            budget=budget,
            name=name,
            clock=clock,
            rng=rng,
            listeners=listeners,
        )
    pipeline = Pipeline(
        retry=retry,
        breaker=breaker,
        bulkhead=bulkhead,
        hedge=hedge,
        fallback=fallback,
        name=name,
    )
    return Service(name, pipeline, frozenset(idempotent), attempt_timeout, timeout, clock)


def idempotent_methods(*descriptors: object) -> frozenset[str]:
    """The methods marked ``option idempotency_level = IDEMPOTENT`` (or ``NO_SIDE_EFFECTS``) in
    protobuf service or file descriptors, as ``/package.Service/Method`` names.

    ``service("menu", idempotent=idempotent_methods(food_pb2.DESCRIPTOR))``: the ``.proto``
    stays the one place that says which methods are safe to repeat.
    """
    names: set[str] = set()
    for descriptor in descriptors:
        services = getattr(descriptor, "services_by_name", None)
        found: list[Any] = list(services.values()) if services is not None else [descriptor]
        for svc in found:
            methods = getattr(svc, "methods", None)
            if methods is None:
                raise ValueError(
                    f"'descriptors' must be protobuf file or service descriptors: {descriptor!r}"
                )
            for method in methods:
                level = method.GetOptions().idempotency_level
                if level in _REPEATABLE_LEVELS:
                    names.add(f"/{svc.full_name}/{method.name}")
    return frozenset(names)
