"""A downstream service's policies: as plain data (``ServicePolicies``, what a config file
holds) and built (``Downstream``, the live breaker, budget, bulkhead... and the pipelines).

``ServicePolicies`` is one frozen options object per downstream service (Envoy's cluster
settings, Resilience4j's instance config). A client turns it, once per service, into a
``Downstream``: every call to ``menu`` goes through the same breaker, budget, bulkhead and rate
limiter, which is what makes the breaker see the service's health and the budget cap the
service's retries. The policies are interlink's own (``interlink.resilience``), composed by its
``Pipeline``. Two pipelines share them: one for requests that may be sent again (retry and
hedge) and one for those that may not (no retry, no hedge), since whether a request is
idempotent is known per call and a pipeline's policies are fixed.

Defaults follow Envoy's retry policy (2 retries, 25 ms first backoff, 250 ms cap), Finagle's
retry budget (20 % + 10/s over 10 s) and a breaker that opens at 50 % failures over at least 20
calls in 10 s and probes after 5 s.

A config file (JSON, or TOML by suffix) has a ``default`` table and a ``services`` table::

    [default]
    timeout = 2.0

    [services.menu]
    url = "http://menu.internal:8080"   # optional: a fixed address instead of the resolver
    retries = 3
    stale_if_error = 300
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from interlink.clock import Clock
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
from interlink.resilience import _validate as v
from interlink.resilience._jitter import checked
from interlink.resilience.events import Listener

__all__ = ["Downstream", "Downstreams", "ServiceConfig", "ServicePolicies", "load_config"]


def _optional_positive(name: str, value: float | None) -> None:
    if value is not None:
        v.positive(name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePolicies:
    """How calls to one downstream service are bounded, retried and cut off.

    ``timeout``: seconds for the whole call, retries included (None: only the caller's deadline).
    ``attempt_timeout``: cap on each attempt (Envoy's ``per_try_timeout``).
    ``retries``: extra attempts for failures of requests that may be sent again (``Retry``'s
    words): the delays grow from ``backoff`` by ``multiplier`` up to ``max_backoff``, with
    ``jitter``; a server's ``Retry-After`` longer than ``max_retry_after`` is not waited for.
    ``budget_*``: the service's shared retry budget (``RetryBudget``); ``budget_ratio=None`` turns
    it off (not recommended: it is what stops retry storms).
    ``breaker``: False turns the breaker off; the other breaker fields are ``CircuitBreaker``'s.
    ``max_concurrent``/``max_queue``: a bulkhead (None: no limit).
    ``rate``/``burst``: a client-side rate limit (calls per second; None: none).
    ``hedge_delay``: hedge idempotent requests after this many seconds (``AsyncClient`` only).
    ``stale_if_error``: answer a failed GET with the last good answer to the same URL if it is
    at most this many seconds old (RFC 5861), from a cache of ``stale_entries`` URLs.
    """

    timeout: float | None = 10.0
    attempt_timeout: float | None = None
    retries: int = 2
    backoff: float = 0.025
    multiplier: float = 2.0
    max_backoff: float = 0.25
    jitter: str = "full"
    max_retry_after: float = 10.0
    budget_ratio: float | None = 0.2
    budget_min_per_second: float = 10.0
    budget_ttl: float = 10.0
    breaker: bool = True
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 20
    breaker_window: float = 10.0
    cooldown: float = 5.0
    half_open_calls: int = 1
    slow_call_duration: float | None = None
    max_concurrent: int | None = None
    max_queue: int = 0
    rate: float | None = None
    burst: int | None = None
    hedge_delay: float | None = None
    max_hedges: int = 1
    stale_if_error: float | None = None
    stale_entries: int = 256

    def __post_init__(self) -> None:
        _optional_positive("timeout", self.timeout)
        _optional_positive("attempt_timeout", self.attempt_timeout)
        v.at_least("retries", self.retries, 0)
        checked(self.backoff, self.multiplier, self.max_backoff, self.jitter)
        v.non_negative("max_retry_after", self.max_retry_after)
        if self.budget_ratio is not None:
            v.non_negative("budget_ratio", self.budget_ratio)
        v.non_negative("budget_min_per_second", self.budget_min_per_second)
        v.positive("budget_ttl", self.budget_ttl)
        if not isinstance(self.breaker, bool):
            raise ValueError(f"'breaker' must be true or false: {self.breaker!r}")
        v.fraction("failure_rate_threshold", self.failure_rate_threshold)
        v.positive_int("minimum_calls", self.minimum_calls)
        v.positive("breaker_window", self.breaker_window)
        v.non_negative("cooldown", self.cooldown)
        v.positive_int("half_open_calls", self.half_open_calls)
        _optional_positive("slow_call_duration", self.slow_call_duration)
        if self.max_concurrent is not None:
            v.positive_int("max_concurrent", self.max_concurrent)
        v.at_least("max_queue", self.max_queue, 0)
        if self.max_queue and self.max_concurrent is None:
            raise ValueError(
                f"'max_queue' needs 'max_concurrent' (a queue for what?): {self.max_queue!r}"
            )
        _optional_positive("rate", self.rate)
        if self.burst is not None:
            if self.rate is None:
                raise ValueError(f"'burst' needs 'rate': {self.burst!r}")
            v.positive_int("burst", self.burst)
        if self.hedge_delay is not None:
            v.non_negative("hedge_delay", self.hedge_delay)
        v.positive_int("max_hedges", self.max_hedges)
        _optional_positive("stale_if_error", self.stale_if_error)
        v.positive_int("stale_entries", self.stale_entries)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base: ServicePolicies | None = None
    ) -> ServicePolicies:
        """Policies from a config table, on top of ``base`` (default: the defaults).

        Unknown keys raise ValueError naming them: a misspelt ``retires = 5`` must not be
        silently ignored.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown service policy option(s): {', '.join(unknown)}")
        return dataclasses.replace(base if base is not None else cls(), **dict(data))


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A loaded config file: default policies, and per service its policies and fixed URL."""

    default: ServicePolicies
    services: Mapping[str, ServicePolicies]
    urls: Mapping[str, str]


def load_config(source: Mapping[str, Any] | str | Path) -> ServiceConfig:
    """Read ``{"default": {...}, "services": {"name": {...}}}`` from a mapping or a file
    (``.toml`` parsed as TOML, anything else as JSON)."""
    if isinstance(source, str | Path):
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        data: Mapping[str, Any] = (
            tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        )
    else:
        data = source
    unknown = sorted(set(data) - {"default", "services"})
    if unknown:
        raise ValueError(
            f"unknown config section(s): {', '.join(unknown)} (expected default, services)"
        )
    default = ServicePolicies.from_dict(data.get("default", {}))
    services: dict[str, ServicePolicies] = {}
    urls: dict[str, str] = {}
    for name, given in data.get("services", {}).items():
        table = dict(given)
        url = table.pop("url", None)
        if url is not None:
            urls[name] = str(url)
        services[name] = ServicePolicies.from_dict(table, base=default)
    return ServiceConfig(default=default, services=services, urls=urls)


class Downstream:
    """One downstream service as a client calls it: its name, fixed ``url`` (or None: the
    resolver picks), ``policies`` and the live policy objects built from them.

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
                backoff=p.backoff,
                multiplier=p.multiplier,
                max_backoff=p.max_backoff,
                jitter=p.jitter,
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
        return f"Downstream({self.name!r}, url={self.url!r}, {self.pipeline!r})"


class Downstreams:
    """The services a client calls, each built on first use from its configured or the
    default policies; one ``Downstream`` per name for the client's lifetime."""

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
        self._map: dict[str, Downstream] = {}
        self._lock = threading.Lock()
        for name, policies in configured.items():
            self._build(name, policies, self._urls.get(name))

    def get(self, name: str) -> Downstream:
        """The service ``name``, built from the default policies on first use."""
        service = self._map.get(name)
        if service is None:
            with self._lock:
                service = self._map.get(name)
                if service is None:
                    service = self._build(name, self._default, self._urls.get(name))
        return service

    def configure(self, name: str, policies: ServicePolicies | None, url: str | None) -> Downstream:
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

    def __iter__(self) -> Iterator[Downstream]:
        return iter(list(self._map.values()))

    def _build(self, name: str, policies: ServicePolicies, url: str | None) -> Downstream:
        service = Downstream(
            name,
            policies,
            url=url,
            clock=self._clock,
            listeners=self._listeners,
            allow_hedge=self._allow_hedge,
        )
        self._map[name] = service
        return service
