"""``Picked``: the instance ``Resolver.pick`` chose for one attempt, and the report of how that
attempt went.

A module of its own so that the resolver's front door reads without it; the report feeds the
in-flight count and passive ejection, through ``Rotation._failed``.
"""

from __future__ import annotations

from types import TracebackType

from interlink.discovery._resolver_rotation import Rotation
from interlink.discovery._resolver_service import CachedService
from interlink.discovery.balancer import FAILURE_WEIGHT, Endpoint
from interlink.discovery.instance import ServiceInstance

__all__ = ["Picked"]


class Picked:
    """The instance chosen for one attempt; report the outcome with ``done(ok)`` exactly once.

    ``done`` ends the call's share of the instance's in-flight count (what power-of-two
    balancing weighs) and feeds passive outlier ejection: ``ok=False`` for connection errors,
    5xx, UNAVAILABLE and the like; ``ok=True`` otherwise (a 404 is the caller's problem, not the
    instance's). A second call is ignored. Also a context manager: ``with resolver.pick(s) as p``
    reports ``ok`` unless the block raises.
    """

    __slots__ = ("_done", "_endpoint", "_resolver", "_service", "instance")

    def __init__(self, endpoint: Endpoint, service: CachedService, resolver: Rotation) -> None:
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

    def __enter__(self) -> Picked:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done(exc_type is None)

    def __repr__(self) -> str:
        return f"<Picked {self.instance.service} at {self.instance.address}>"
