"""Keeping a resolver's cache fresh: the first look-up of a service, the watch that follows it
(retried with backoff while the registry is unreachable), and an empty snapshot held back for
``recover_grace`` right after an outage.

A base class of ``Resolver`` so that the cache's upkeep, which only background tasks run,
reads apart from the front door (``resolver``) that answers from the cache.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from interlink.discovery._resolver_rotation import Rotation
from interlink.discovery._resolver_service import CachedService
from interlink.discovery.balancer import Endpoint
from interlink.discovery.registry import Registry, Snapshot, snapshot_of
from interlink.errors import NoInstancesError

__all__ = ["Watching"]

log = logging.getLogger("interlink.discovery")


class Watching(Rotation):
    """The cache-upkeep half of ``Resolver``; the attributes are set by ``Resolver.__init__``."""

    registry: Registry
    _health: Any
    _health_tasks: dict[str, asyncio.Task[None]]
    _recover_grace: float
    _retry_delay: float
    _max_retry_delay: float
    _errors: int
    _updates: int

    async def _load(self, state: CachedService) -> None:
        try:
            found = await self.registry.lookup(state.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._errors += 1
            log.warning("discovery: looking up %r failed: %s", state.name, exc)
            raise NoInstancesError(state.name, "unreachable") from exc
        self._apply(state, snapshot_of(found))
        state.loaded = True
        state.task = asyncio.get_running_loop().create_task(
            self._follow(state), name=f"interlink-watch-{state.name}"
        )
        if self._health is not None:
            self._health_tasks[state.name] = asyncio.get_running_loop().create_task(
                self._health.run(self, state.name), name=f"interlink-health-{state.name}"
            )

    async def _follow(self, state: CachedService) -> None:
        delay = self._retry_delay
        while True:
            try:
                async for snap in self.registry.watch(state.name):
                    self._received(state, snap)
                    delay = self._retry_delay
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors += 1
                if not state.stale:
                    state.stale = True
                    state.recovered_at = None
                log.warning(
                    "discovery: registry unreachable while watching %r (%s: %s); serving %d "
                    "last known instance(s), retrying in %.2fs",
                    state.name,
                    type(exc).__name__,
                    exc,
                    len(state.endpoints),
                    delay,
                    extra={"service": state.name, "stale": True},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_retry_delay)

    def _received(self, state: CachedService, snap: Snapshot) -> None:
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

    def _apply(self, state: CachedService, snap: Snapshot) -> None:
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
