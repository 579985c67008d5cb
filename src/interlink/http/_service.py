"""One downstream service's shared policies, built once from its ``ServicePolicies``.

Every call to ``menu`` goes through the same breaker, budget, bulkhead and rate limiter: that is
what makes the breaker see the service's health and the budget cap the service's retries. The
policies are interlink's own (``interlink.resilience``), composed by its ``Pipeline``; this
module only builds them. Two pipelines share them: one for requests that may be sent again
(retry and hedge) and one for those that may not (no retry, no hedge), since whether a request
is idempotent is known per call and a pipeline's policies are fixed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from interlink.clock import Clock
from interlink.http._config import ServicePolicies
from interlink.http.classify import AttemptFailed, is_retryable
from interlink.resilience import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Hedge,
    Pipeline,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
)
from interlink.resilience.events import Listener

__all__ = ["Service", "Services"]


class Service:
    """The policies of one downstream service, and the pipelines that run them.

    Read-only for users: ``breaker``, ``budget``, ``bulkhead``... are the live policy objects
    (for metrics, ``force_open()``, listeners); ``pipeline.describe()`` shows the composition.
    """

    __slots__ = (
        "_clock",
        "_listeners",
        "_stale",
        "attempt_ms_floor",
        "breaker",
        "budget",
        "bulkhead",
        "enforces_deadline",
        "hedge",
        "name",
        "pipeline",
        "policies",
        "rate_limiter",
        "retry",
        "timeout",
        "unsafe_pipeline",
        "url",
    )

    def __init__(
        self,
        name: str,
        policies: ServicePolicies,
        *,
        url: str | None = None,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
        allow_hedge: bool = True,
    ) -> None:
        p = policies
        if p.hedge_delay is not None and not allow_hedge:
            raise ValueError(
                f"'hedge_delay' needs AsyncClient (hedging runs attempts side by side): "
                f"{p.hedge_delay!r} for service '{name}'"
            )
        listeners = tuple(listeners)
        self.name = name
        self.policies = p
        self.url = None if url is None else url.rstrip("/")
        self._clock = clock
        self._listeners = listeners
        self.timeout = None if p.timeout is None else Timeout(p.timeout, name=name, clock=clock)
        self.budget = (
            None
            if p.budget_ratio is None
            else RetryBudget(
                p.budget_ratio, p.budget_min_per_second, p.budget_ttl, name=name, clock=clock
            )
        )
        self.retry = (
            None
            if p.retries == 0
            else Retry(
                p.retries,
                backoff=p.retry_base,
                max_backoff=p.retry_max_delay,
                jitter=p.retry_jitter,
                retry_on=is_retryable,
                budget=self.budget,
                name=name,
                clock=clock,
                listeners=listeners,
            )
        )
        self.hedge = (
            None
            if p.hedge_delay is None
            else Hedge(
                p.hedge_delay,
                max_hedges=p.max_hedges,
                budget=self.budget,
                name=name,
                clock=clock,
                listeners=listeners,
            )
        )
        self.breaker = (
            CircuitBreaker(
                name,
                failure_rate_threshold=p.failure_rate_threshold,
                window=p.breaker_window,
                minimum_calls=p.minimum_calls,
                cooldown=p.cooldown,
                half_open_calls=p.half_open_calls,
                slow_call_duration=p.slow_call_duration,
                record_exceptions=(AttemptFailed,),
                clock=clock,
                listeners=listeners,
            )
            if p.breaker
            else None
        )
        self.rate_limiter = (
            None
            if p.rate is None
            else RateLimiter(p.rate, p.burst, name=name, clock=clock, listeners=listeners)
        )
        self.bulkhead = (
            None
            if p.max_concurrent is None
            else Bulkhead(
                p.max_concurrent,
                p.max_queue,
                None if p.max_queue else 0.0,
                name=name,
                clock=clock,
                listeners=listeners,
            )
        )
        common: dict[str, Any] = {
            "timeout": self.timeout,
            "breaker": self.breaker,
            "rate_limiter": self.rate_limiter,
            "bulkhead": self.bulkhead,
            "name": name,
        }
        self.pipeline = Pipeline(retry=self.retry, hedge=self.hedge, **common)
        self.unsafe_pipeline = (
            self.pipeline if self.retry is None and self.hedge is None else Pipeline(**common)
        )
        self._stale: dict[str, Fallback] | None = None if p.stale_if_error is None else {}
        #: True when the pipeline's Timeout cancels an attempt at the deadline by itself (no
        #: hedge: a hedge runs attempts in tasks of their own, which the Timeout cannot see)
        self.enforces_deadline = self.timeout is not None and self.hedge is None
        #: an attempt budget below this many ms comes from ``attempt_timeout``, which only the
        #: transport's own timer enforces
        self.attempt_ms_floor = (
            1 << 62 if p.attempt_timeout is None else int(p.attempt_timeout * 1000.0)
        )

    # -- stale-if-error ------------------------------------------------------------------------

    def remember(self, key: str, response: object) -> None:
        """Keep ``response`` as the last good answer for ``key`` (a GET's URL)."""
        stale = self._stale
        if stale is None:
            return
        fallback = stale.get(key)
        if fallback is None:
            if len(stale) >= self.policies.stale_entries:
                stale.pop(next(iter(stale), key), None)  # the oldest URL makes room
            fallback = Fallback(
                cache_last_success=True,
                max_age=self.policies.stale_if_error,
                name=f"{self.name}:stale",
                clock=self._clock,
                listeners=self._listeners,
            )
            stale[key] = fallback
        fallback.remember(response)

    def stale(self, key: str, error: Exception) -> Any | None:
        """The last good answer for ``key`` if fresh enough, else None."""
        if self._stale is None:
            return None
        fallback = self._stale.get(key)
        if fallback is None:
            return None
        try:
            return fallback.recover(error)
        except Exception:
            return None

    def __repr__(self) -> str:
        return f"Service({self.name!r}, url={self.url!r}, {self.pipeline!r})"


class Services:
    """The services a client calls, each built on first use from its configured or the
    default policies; one ``Service`` per name for the client's lifetime."""

    __slots__ = (
        "_allow_hedge",
        "_clock",
        "_default",
        "_listeners",
        "_lock",
        "_map",
        "_urls",
    )

    def __init__(
        self,
        default: ServicePolicies,
        configured: Mapping[str, ServicePolicies] = {},
        urls: Mapping[str, str] = {},
        *,
        clock: Clock = time.monotonic,
        listeners: Iterable[Listener] = (),
        allow_hedge: bool = True,
    ) -> None:
        if default.hedge_delay is not None and not allow_hedge:
            raise ValueError(
                "'hedge_delay' needs AsyncClient (hedging runs attempts side by side): "
                f"{default.hedge_delay!r}"
            )
        self._default = default
        self._urls = dict(urls)
        self._clock = clock
        self._listeners = tuple(listeners)
        self._allow_hedge = allow_hedge
        self._map: dict[str, Service] = {}
        self._lock = threading.Lock()
        for name, policies in configured.items():
            self._build(name, policies, self._urls.get(name))

    def get(self, name: str) -> Service:
        """The service ``name``, built from the default policies on first use."""
        service = self._map.get(name)
        if service is None:
            with self._lock:
                service = self._map.get(name)
                if service is None:
                    service = self._build(name, self._default, self._urls.get(name))
        return service

    def configure(self, name: str, policies: ServicePolicies | None, url: str | None) -> Service:
        """Give ``name`` its own policies (and fixed URL) once; later calls must agree."""
        if not name:
            raise ValueError(f"'name' must be a non-empty service name: {name!r}")
        with self._lock:
            current = self._map.get(name)
            if current is not None:
                same = (policies is None or policies == current.policies) and (
                    url is None or url.rstrip("/") == current.url
                )
                if not same:
                    raise ValueError(
                        f"service '{name}' is already configured (policies are built once, "
                        f"so every call shares one breaker and one budget): {policies!r}"
                    )
                return current
            return self._build(name, policies or self._default, url)

    def __iter__(self) -> Any:
        return iter(list(self._map.values()))

    def _build(self, name: str, policies: ServicePolicies, url: str | None) -> Service:
        service = Service(
            name,
            policies,
            url=url,
            clock=self._clock,
            listeners=self._listeners,
            allow_hedge=self._allow_hedge,
        )
        self._map[name] = service
        return service
