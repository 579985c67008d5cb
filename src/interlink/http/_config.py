"""Per-downstream policies as plain data: what a config file holds for each service.

``ServicePolicies`` is one frozen options object per downstream service (Envoy's cluster
settings, Resilience4j's instance config); the client turns it into one breaker, one retry
budget, one bulkhead... per service, shared by every call to that service. Defaults follow
Envoy's retry policy (2 retries, 25 ms base, 250 ms cap), Finagle's retry budget (20 % + 10/s over
10 s) and a breaker that opens at 50 % failures over at least 20 calls in 10 s and probes after
5 s.

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
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from interlink.resilience import _validate as v

__all__ = ["ServiceConfig", "ServicePolicies", "load_config"]

JITTERS = ("full", "equal", "decorrelated", "none")


def _optional_positive(name: str, value: float | None) -> None:
    if value is not None:
        v.positive(name, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePolicies:
    """How calls to one downstream service are bounded, retried and cut off.

    ``timeout``: seconds for the whole call, retries included (None: only the caller's deadline).
    ``attempt_timeout``: cap on each attempt (Envoy's ``per_try_timeout``).
    ``retries``: extra attempts for failures of requests that may be sent again; the delays are
    exponential from ``retry_base`` to ``retry_max_delay`` with ``retry_jitter``; a server's
    ``Retry-After`` longer than ``max_retry_after`` is not waited for.
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
    retry_base: float = 0.025
    retry_max_delay: float = 0.25
    retry_jitter: str = "full"
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
        v.non_negative("retry_base", self.retry_base)
        v.non_negative("retry_max_delay", self.retry_max_delay)
        if self.retry_max_delay < self.retry_base:
            raise ValueError(
                f"'retry_max_delay' must be >= retry_base ({self.retry_base!r}): "
                f"{self.retry_max_delay!r}"
            )
        if self.retry_jitter not in JITTERS:
            allowed = ", ".join(repr(j) for j in JITTERS)
            raise ValueError(f"'retry_jitter' must be one of {allowed}: {self.retry_jitter!r}")
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
