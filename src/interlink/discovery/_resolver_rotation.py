"""Which of a service's cached endpoints are in rotation: the zone preference, passive outlier
ejection and the return of ejected instances, and the marks of active health checks.

A base class of ``Resolver`` so that the rules for leaving and rejoining the rotation read
apart from the cache's upkeep (``_resolver_watch``) and the front door (``resolver``); a method
found on a base class costs a call nothing more.
"""

from __future__ import annotations

import logging

from interlink.clock import Clock
from interlink.discovery._resolver_service import CachedService
from interlink.discovery.balancer import Endpoint, Pool, prefer_zone
from interlink.discovery.outlier import OutlierDetector

__all__ = ["Rotation"]

log = logging.getLogger("interlink.discovery")


class Rotation:
    """The rotation half of ``Resolver``; the attributes are set by ``Resolver.__init__``."""

    _clock: Clock
    _detector: OutlierDetector | None
    _zone: str | None
    _zone_min: int
    _services: dict[str, CachedService]
    _ejections: int
    _returns: int

    def _rebuild(self, state: CachedService) -> None:
        eligible = [e for e in state.endpoints.values() if e.eligible]
        chosen = prefer_zone(eligible, self._zone, self._zone_min)
        state.pool = Pool(chosen, state.ticket)
        untils = [
            e.outlier.ejected_until
            for e in state.endpoints.values()
            if e.outlier.ejected_until is not None
        ]
        state.review_at = min(untils) if untils else None

    def _failed(self, state: CachedService, endpoint: Endpoint) -> None:
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

    def _review(self, state: CachedService) -> None:
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
