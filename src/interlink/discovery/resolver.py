"""The client side: a local cache of every service's instances, kept fresh by ``watch``.

``resolver.pick(service)`` answers from memory only: no network I/O, a dictionary look-up, a
balancer's choice and a small object (about a microsecond). The registry is only ever talked to
by background tasks (one ``watch`` per service), so a slow or dead registry can never slow a
call down; it can only make the cache old, and an old list beats an empty one:

- a ``watch`` or ``lookup`` that fails leaves the cache as it is, marks the service stale, logs
  a warning and counts it in ``stats().errors``; the watch is retried with backoff;
- right after such an outage, an *empty* snapshot is held back for ``recover_grace`` seconds
  (a registry restarted without its data is empty until the instances' next heartbeat), so a
  transient outage never turns into an empty instance list. Once the registry lists instances
  again the grace ends: a later empty list is believed at once.

The first call for a service has nothing cached: ``pick`` raises ``NoInstancesError`` with
reason ``"unresolved"``; ``await apick(service)`` (or ``await prefetch(service)`` once, e.g.
at start-up) fetches it and starts watching it.

This module is the front door (``pick``, ``prefetch``, the counters, the lifecycle); the rest of
the resolver lives in private modules: the per-service record in ``_resolver_service``,
``Picked`` in ``_resolver_picked``, the cache's upkeep in ``_resolver_watch`` and the rotation
(ejection, health, zone) in ``_resolver_rotation``, the last two as ``Resolver``'s base classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from random import Random
from types import TracebackType
from typing import Any

from interlink.clock import Clock
from interlink.discovery._resolver_picked import Picked
from interlink.discovery._resolver_service import CachedService
from interlink.discovery._resolver_watch import Watching
from interlink.discovery.balancer import Balancer, Endpoint, balancer_of
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.outlier import OutlierDetector, OutlierOptions
from interlink.discovery.registry import DEFAULT_TTL, Registry, from_url
from interlink.errors import NoInstancesError

__all__ = ["Picked", "Resolver", "ResolverStats"]


@dataclass(frozen=True, slots=True)
class ResolverStats:
    """Counters of one resolver, for metrics and tests."""

    errors: int
    """Failed registry look-ups and broken watches (each served from the cache when it had one)."""
    stale: frozenset[str]
    """Services currently served from a cache the registry could not confirm."""
    updates: int
    """Snapshots applied."""
    ejections: int
    """Instances taken out of rotation by passive outlier ejection."""
    returns: int
    """Ejected instances put back into rotation after their ejection time."""


class Resolver(Watching):
    """Resolves service names to instances from a watched local cache.

    ``balancer``: ``"p2c"`` (default), ``"round_robin"``, ``"random"`` or a ``Balancer``.
    ``outlier``: ``OutlierOptions`` (default: 5 failures in a row eject for 5 s, growing to
    60 s; at most half the pool) or ``None`` to switch passive ejection off. ``zone``: prefer
    instances in this zone while at least ``zone_min_instances`` of them are in rotation.
    ``health``: an ``interlink.discovery.health.HealthCheck`` for active checks (off by
    default). ``retry_delay``/``max_retry_delay``: backoff between attempts to re-establish a
    broken watch.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        balancer: Balancer | str | None = None,
        outlier: OutlierOptions | None = OutlierOptions(),  # noqa: B008 - immutable
        zone: str | None = None,
        zone_min_instances: int = 1,
        health: Any = None,
        recover_grace: float = DEFAULT_TTL,
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        clock: Clock = time.monotonic,
        rng: Random | None = None,
        owns_registry: bool = False,
    ) -> None:
        self.registry = registry
        self._balancer = balancer_of(balancer, rng)
        self._choose = self._balancer.choose
        self._detector = OutlierDetector(outlier) if outlier is not None else None
        self._zone = zone
        self._zone_min = zone_min_instances
        self._health = health
        self._recover_grace = recover_grace
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._clock = clock
        self._owns_registry = owns_registry
        self._services: dict[str, CachedService] = {}
        self._health_tasks: dict[str, asyncio.Task[None]] = {}
        self._errors = 0
        self._updates = 0
        self._ejections = 0
        self._returns = 0
        self._closed = False

    @classmethod
    def from_url(
        cls, url: str, *, registry_options: dict[str, Any] | None = None, **kwargs: Any
    ) -> Resolver:
        """A resolver over the registry at ``url``; it closes that registry on ``aclose``."""
        registry = from_url(url, **(registry_options or {}))
        return cls(registry, owns_registry=True, **kwargs)

    # ---------------------------------------------------------------- hot path

    def pick(self, service: str) -> Picked:
        """An instance of ``service`` from the cache, without I/O.

        Raises ``NoInstancesError``: reason ``"unresolved"`` when ``service`` was never fetched
        (use ``apick`` or ``prefetch``), ``"empty"`` when none is registered, ``"ejected"`` when
        none is in rotation.
        """
        state = self._services.get(service)
        if state is None or not state.loaded:
            raise NoInstancesError(service, "unresolved")
        review = state.review_at
        if review is not None and review <= self._clock():
            self._review(state)
        pool = state.pool
        if not pool.endpoints:
            raise NoInstancesError(service, "ejected" if state.endpoints else "empty")
        endpoint = self._choose(pool)
        endpoint.outstanding += 1
        return Picked(endpoint, state, self)

    async def apick(self, service: str) -> Picked:
        """Like ``pick``, but fetches ``service`` from the registry first if it is not cached."""
        state = self._services.get(service)
        if state is None or not state.loaded:
            await self.prefetch(service)
        return self.pick(service)

    # ---------------------------------------------------------------- cache

    async def prefetch(self, service: str) -> None:
        """Fetch ``service`` now and keep watching it; a no-op when already cached.

        Raises ``NoInstancesError`` (reason ``"unreachable"``, the backend error as its cause)
        when the registry cannot be asked and nothing is cached.
        """
        check_service(service)
        if self._closed:
            raise RuntimeError("the resolver is closed")
        state = self._services.get(service)
        if state is None:
            state = self._services[service] = CachedService(service)
        if state.loaded:
            return
        if state.loading is None:
            state.loading = asyncio.ensure_future(self._load(state))
        loading = state.loading
        try:
            await asyncio.shield(loading)
        except NoInstancesError:
            if state.loading is loading:
                state.loading = None
            raise

    def instances(self, service: str) -> tuple[ServiceInstance, ...]:
        """Every cached instance of ``service``, in rotation or not (empty when unknown)."""
        state = self._services.get(service)
        if state is None:
            return ()
        return tuple(e.instance for e in state.endpoints.values())

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        """The cached endpoints of ``service`` with their in-flight, health and ejection state."""
        state = self._services.get(service)
        return tuple(state.endpoints.values()) if state is not None else ()

    def services(self) -> list[str]:
        """The services this resolver has resolved."""
        return sorted(name for name, s in self._services.items() if s.loaded)

    def stats(self) -> ResolverStats:
        """The resolver's counters right now."""
        return ResolverStats(
            errors=self._errors,
            stale=frozenset(n for n, s in self._services.items() if s.stale),
            updates=self._updates,
            ejections=self._ejections,
            returns=self._returns,
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self, services: Iterable[str] = ()) -> Resolver:
        """Fetch and watch ``services`` now, so their first ``pick`` is served from the cache."""
        await asyncio.gather(*(self.prefetch(s) for s in services))
        return self

    async def aclose(self) -> None:
        """Stop every watch and health task; close the registry when built by ``from_url``."""
        self._closed = True
        tasks = [s.task for s in self._services.values() if s.task is not None]
        tasks += list(self._health_tasks.values())
        for state in self._services.values():
            if state.held is not None:
                state.held.cancel()
            if state.loading is not None and not state.loading.done():
                tasks.append(state.loading)  # type: ignore[arg-type]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._owns_registry:
            await self.registry.aclose()

    async def __aenter__(self) -> Resolver:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
