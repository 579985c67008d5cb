"""The client side: a local cache of every service's instances, kept fresh by ``watch``.

``resolver.pick(service)`` answers from memory only: no network I/O, a dictionary look-up, a
balancer's choice and a small object (about a microsecond). The registry is only ever talked to
by background tasks (one ``watch`` per service), so a slow or dead registry can never slow a
call down; it can only make the cache old, and an old list beats an empty one:

- a ``watch`` or ``lookup`` that fails leaves the cache as it is, marks the service stale, logs
  a warning ("unreachable", or "unreadable" when the registry answered with something that is
  not a registry's answer) and counts it in ``stats().errors``. While the registry is down the
  resolver asks it cheaply (``probe``: a ping, not a listing) every ``probe_interval`` and
  watches again as soon as it answers; the full watch is retried with backoff meanwhile;
- right after such an outage, an *empty* snapshot is held back for ``recover_grace`` seconds
  (a registry restarted without its data is empty until the instances' next heartbeat), so a
  transient outage never turns into an empty instance list. Once the registry lists instances
  again the grace ends: a later empty list is believed at once.

The first call for a service has nothing cached: ``pick`` raises ``NoInstancesError`` with
reason ``"unresolved"``; ``await apick(service)`` (or ``await prefetch(service)`` once, e.g.
at start-up) fetches it and starts watching it.

Which cached endpoints are in rotation is decided here too: the zone preference, passive
outlier ejection (``Picked.done(False)`` feeds it) and its expiry, and active health checks'
marks. ``pick(service, avoid)`` skips the instances in ``avoid`` while another is in rotation:
a retry passes the instances that failed earlier in the same call, so it goes elsewhere
(Envoy's "previous hosts" retry predicate).

``Picker`` and ``Picked`` are the protocols the HTTP and gRPC clients accept: any object with
``pick(service, avoid=()) -> Picked`` can choose their instances; ``Resolver`` is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from random import Random
from typing import Any, Protocol

from interlink._closing import AsyncClosing
from interlink.clock import Clock
from interlink.discovery.balancer import (
    FAILURE_WEIGHT,
    Balancer,
    Endpoint,
    Pool,
    balancer_of,
    prefer_zone,
)
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.outlier import OutlierDetector, OutlierOptions
from interlink.discovery.registry import DEFAULT_TTL, Registry, Snapshot, snapshot_of
from interlink.errors import NoInstancesError

__all__ = ["Address", "Picked", "PickedEndpoint", "Picker", "Resolver", "ResolverStats"]

log = logging.getLogger("interlink.discovery")


class Address(Protocol):
    """Where a picked instance listens (``ServiceInstance`` is one)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def protocol(self) -> str: ...


class Picked(Protocol):
    """The instance chosen for one attempt; ``done(ok)`` is called exactly once after it."""

    @property
    def instance(self) -> Address: ...
    def done(self, ok: bool = True) -> None: ...


class Picker(Protocol):
    """What the HTTP and gRPC clients need from service discovery: an instance of ``service``
    for one attempt, chosen without I/O, other than those in ``avoid`` (the instances that
    failed earlier in the same call) while another is available."""

    def pick(self, service: str, avoid: Collection[Any] = ()) -> Picked: ...


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


class _Service:
    """Everything the resolver keeps for one service: the cached endpoints, the pool in
    rotation, the watch task and the outage bookkeeping."""

    __slots__ = (
        "endpoints",
        "held",
        "loaded",
        "loading",
        "name",
        "pool",
        "recovered_at",
        "review_at",
        "stale",
        "task",
        "ticket",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.endpoints: dict[str, Endpoint] = {}
        self.ticket = itertools.count().__next__
        self.pool = Pool((), self.ticket)
        self.review_at: float | None = None
        self.loaded = False
        self.loading: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.stale = False
        self.recovered_at: float | None = None
        self.held: asyncio.TimerHandle | None = None


class PickedEndpoint:
    """What ``Resolver.pick`` returns: the instance chosen for one attempt; report the outcome
    with ``done(ok)`` exactly once.

    ``done`` ends the call's share of the instance's in-flight count (what power-of-two
    balancing weighs) and feeds passive outlier ejection: ``ok=False`` for connection errors,
    5xx, UNAVAILABLE and the like; ``ok=True`` otherwise (a 404 is the caller's problem, not the
    instance's). A second call is ignored. Also a context manager: ``with resolver.pick(s) as p``
    reports ``ok`` unless the block raises.
    """

    __slots__ = ("_done", "_endpoint", "_resolver", "_service", "instance")

    def __init__(self, endpoint: Endpoint, service: _Service, resolver: Resolver) -> None:
        self.instance: ServiceInstance = endpoint.instance
        self._endpoint = endpoint
        self._service = service
        self._resolver = resolver
        self._done = False

    def done(self, ok: bool = True) -> None:
        """Report the attempt's outcome (once)."""
        if self._done:
            return
        self._done = True
        endpoint = self._endpoint
        endpoint.outstanding -= 1
        if ok:
            if endpoint.penalty:
                endpoint.penalty = 0
            outlier = endpoint.outlier
            if outlier.failures:
                outlier.failures = 0
        else:
            endpoint.penalty += FAILURE_WEIGHT
            self._resolver._failed(self._service, endpoint)

    def __enter__(self) -> PickedEndpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.done(exc_type is None)

    def __repr__(self) -> str:
        return f"<PickedEndpoint {self.instance.service} at {self.instance.address}>"


def _unreadable(exc: BaseException) -> bool:
    """Whether a registry error means "answered, but with garbage" rather than "unreachable"."""
    return isinstance(exc, ValueError | TypeError | LookupError | ArithmeticError)


class Resolver(AsyncClosing):
    """Resolves service names to instances from a watched local cache.

    ``balancer``: ``"p2c"`` (default), ``"round_robin"``, ``"random"`` or a ``Balancer``.
    ``outlier``: ``OutlierOptions`` (default: 5 failures in a row eject for 5 s, growing to
    60 s; at most half the pool) or ``None`` to switch passive ejection off. ``zone``: prefer
    instances in this zone while at least ``zone_min_instances`` of them are in rotation.
    ``health``: an ``interlink.discovery.health.HealthCheck`` for active checks (off by
    default). ``retry_delay``/``max_retry_delay``: backoff between attempts to re-establish a
    broken watch; ``probe_interval``: how often an unreachable registry is asked whether it is
    back (when it has a ``probe``), so the watch resumes within about that much of its return.
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
        probe_interval: float = 0.25,
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
        self._probe_interval = probe_interval
        self._clock = clock
        self._owns_registry = owns_registry
        self._services: dict[str, _Service] = {}
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
        registry = Registry.from_url(url, **(registry_options or {}))
        return cls(registry, owns_registry=True, **kwargs)

    # ---------------------------------------------------------------- hot path

    def pick(self, service: str, avoid: Collection[Any] = ()) -> PickedEndpoint:
        """An instance of ``service`` from the cache, without I/O, not one in ``avoid`` (the
        instances that failed earlier in this call) while another is in rotation.

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
        if avoid and endpoint.instance in avoid:
            others = [e for e in pool.endpoints if e.instance not in avoid]
            if others:
                endpoint = self._choose(Pool(others, pool.ticket))
        endpoint.outstanding += 1
        return PickedEndpoint(endpoint, state, self)

    async def apick(self, service: str, avoid: Collection[Any] = ()) -> PickedEndpoint:
        """Like ``pick``, but fetches ``service`` from the registry first if it is not cached."""
        state = self._services.get(service)
        if state is None or not state.loaded:
            await self.prefetch(service)
        return self.pick(service, avoid)

    # ---------------------------------------------------------------- cache

    async def prefetch(self, service: str) -> None:
        """Fetch ``service`` now and keep watching it; a no-op when already cached.

        Raises ``NoInstancesError`` (reason ``"unreachable"`` or ``"unreadable"``, the backend
        error as its cause) when the registry cannot be asked and nothing is cached.
        """
        check_service(service)
        if self._closed:
            raise RuntimeError("the resolver is closed")
        state = self._services.get(service)
        if state is None:
            state = self._services[service] = _Service(service)
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

    # ---------------------------------------------------------------- upkeep of the cache

    async def _load(self, state: _Service) -> None:
        try:
            found = await self.registry.lookup(state.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._errors += 1
            reason = "unreadable" if _unreadable(exc) else "unreachable"
            log.warning("discovery: looking up %r failed (%s): %s", state.name, reason, exc)
            raise NoInstancesError(state.name, reason) from exc
        self._apply(state, snapshot_of(found))
        state.loaded = True
        loop = asyncio.get_running_loop()
        state.task = loop.create_task(self._follow(state), name=f"interlink-watch-{state.name}")
        if self._health is not None:
            self._health_tasks[state.name] = loop.create_task(
                self._health.run(self, state.name), name=f"interlink-health-{state.name}"
            )

    async def _follow(self, state: _Service) -> None:
        delay = self._retry_delay
        while True:
            unreadable = False
            try:
                async for snap in self.registry.watch(state.name):
                    self._received(state, snap)
                    delay = self._retry_delay
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors += 1
                unreadable = _unreadable(exc)
                if not state.stale:
                    state.stale = True
                    state.recovered_at = None
                log.warning(
                    "discovery: %s while watching %r (%s: %s); serving %d last known "
                    "instance(s), retrying in %.2fs",
                    "registry answered something unreadable"
                    if unreadable
                    else "registry unreachable",
                    state.name,
                    type(exc).__name__,
                    exc,
                    len(state.endpoints),
                    delay,
                    extra={"service": state.name, "stale": True},
                )
            await self._pause(delay, probe=not unreadable)
            delay = min(delay * 2, self._max_retry_delay)

    async def _pause(self, delay: float, *, probe: bool) -> None:
        """Wait ``delay`` before watching again, or less: for an unreachable registry with a
        ``probe``, until the probe says it answers again."""
        ask = getattr(self.registry, "probe", None) if probe else None
        step = self._probe_interval
        if ask is None or delay <= step:
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(step, left))
            with contextlib.suppress(Exception):
                if await asyncio.wait_for(ask(), max(step, 1.0)):
                    return

    def _received(self, state: _Service, snap: Snapshot) -> None:
        now = self._clock()
        if state.stale:
            state.stale = False
            state.recovered_at = now
            log.info("discovery: registry reachable again for %r", state.name)
        if state.held is not None:
            state.held.cancel()
            state.held = None
        recovering = (
            state.recovered_at is not None and now - state.recovered_at < self._recover_grace
        )
        if not snap and state.endpoints and recovering:
            # A registry that came back empty: the instances' next heartbeat refills it. Hold
            # the last list for the grace period instead of emptying the cache.
            assert state.recovered_at is not None
            left = self._recover_grace - (now - state.recovered_at)
            log.warning(
                "discovery: registry lists no instance of %r right after an outage; keeping "
                "%d last known for up to %.2fs",
                state.name,
                len(state.endpoints),
                left,
            )
            state.held = asyncio.get_running_loop().call_later(left, self._apply, state, snap)
            return
        if snap:
            # The registry lists instances again, so it has its data back: from now on an
            # empty list is a real one (the last instance deregistered), not a restart's.
            state.recovered_at = None
        self._apply(state, snap)

    def _apply(self, state: _Service, snap: Snapshot) -> None:
        state.held = None
        old = state.endpoints
        new: dict[str, Endpoint] = {}
        for instance in snap:
            endpoint = old.get(instance.instance_id)
            if endpoint is None or endpoint.instance != instance:
                endpoint = Endpoint(instance)
            new[instance.instance_id] = endpoint
        state.endpoints = new
        self._updates += 1
        self._rebuild(state)

    # ---------------------------------------------------------------- rotation

    def _rebuild(self, state: _Service) -> None:
        eligible = [e for e in state.endpoints.values() if e.eligible]
        chosen = prefer_zone(eligible, self._zone, self._zone_min)
        state.pool = Pool(chosen, state.ticket)
        untils = [
            e.outlier.ejected_until
            for e in state.endpoints.values()
            if e.outlier.ejected_until is not None
        ]
        state.review_at = min(untils) if untils else None

    def _failed(self, state: _Service, endpoint: Endpoint) -> None:
        detector = self._detector
        if detector is None:
            return
        if state.endpoints.get(endpoint.instance.instance_id) is not endpoint:
            endpoint.outlier.failures += 1  # no longer listed: nothing to eject
            return
        total = len(state.endpoints)
        ejected = sum(1 for e in state.endpoints.values() if e.outlier.ejected_until is not None)
        now = self._clock()
        if detector.failure(endpoint.outlier, now, total=total, ejected=ejected):
            self._ejections += 1
            log.warning(
                "discovery: ejected %s/%s at %s for %.1fs after %d consecutive failures",
                state.name,
                endpoint.instance.instance_id,
                endpoint.instance.address,
                (endpoint.outlier.ejected_until or now) - now,
                detector.options.consecutive_failures,
                extra={"service": state.name, "instance": endpoint.instance.instance_id},
            )
            self._rebuild(state)

    def _review(self, state: _Service) -> None:
        detector = self._detector
        now = self._clock()
        for endpoint in state.endpoints.values():
            if detector is not None and detector.due(endpoint.outlier, now):
                detector.restore(endpoint.outlier, now)
                endpoint.penalty = 0
                self._returns += 1
                log.info(
                    "discovery: %s/%s back in rotation",
                    state.name,
                    endpoint.instance.instance_id,
                )
        self._rebuild(state)

    def set_health(self, service: str, instance_id: str, healthy: bool) -> None:
        """Mark an instance as passing or failing active health checks (``HealthCheck`` does)."""
        state = self._services.get(service)
        endpoint = state.endpoints.get(instance_id) if state is not None else None
        if state is None or endpoint is None or endpoint.healthy == healthy:
            return
        endpoint.healthy = healthy
        log.warning(
            "discovery: %s/%s is %s",
            service,
            instance_id,
            "healthy again" if healthy else "failing its health check",
        )
        self._rebuild(state)

    # ---------------------------------------------------------------- lifecycle

    async def start(self, services: Iterable[str] = ()) -> Resolver:
        """Fetch and watch ``services`` now, so their first ``pick`` is served from the cache."""
        await asyncio.gather(*(self.prefetch(s) for s in services))
        return self

    async def aclose(self) -> None:
        """Stop every watch and health task; close the registry when built by ``from_url``."""
        self._closed = True
        tasks: list[asyncio.Future[None]] = [
            s.task for s in self._services.values() if s.task is not None
        ]
        tasks += list(self._health_tasks.values())
        for state in self._services.values():
            if state.held is not None:
                state.held.cancel()
            if state.loading is not None and not state.loading.done():
                tasks.append(state.loading)
        pending = set(tasks)
        for _ in range(50):
            if not pending:
                break
            # Cancelled again until done: a client library that swallows one cancellation
            # (a timeout racing it) must not keep a watch, and this close, alive forever.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a watch that failed while closing says nothing
        if self._owns_registry:
            await self.registry.aclose()

    async def __aenter__(self) -> Resolver:
        return await self.start()
