"""Which instance gets the next call: round-robin, random, or power of two choices.

Pure: a balancer sees a ``Pool`` (the instances currently in rotation plus a shared ticket
counter) and returns one ``Endpoint``. The resolver rebuilds the pool when the registry, an
ejection or a health check changes who is in rotation, so choosing never filters or sorts.

The default, ``PowerOfTwo``, samples two instances and takes the one with fewer calls in
flight (Mitzenmacher; Envoy's and Finagle's least-request balancer). It steers away from a
slow instance as soon as its calls pile up, without the herd behaviour of "always the least
loaded", and costs two random numbers. ``RoundRobin`` is predictable (tests, demos);
``RandomBalancer`` is the cheapest and spreads fine at high rates.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from random import Random
from typing import Protocol

from interlink.discovery.instance import ServiceInstance
from interlink.discovery.outlier import OutlierState

__all__ = [
    "Balancer",
    "Endpoint",
    "Pool",
    "PowerOfTwo",
    "RandomBalancer",
    "RoundRobin",
    "balancer_of",
    "prefer_zone",
]


class Endpoint:
    """An instance plus what the client knows of it: calls in flight, health, ejection."""

    __slots__ = ("healthy", "instance", "outlier", "outstanding", "penalty", "zone")

    def __init__(self, instance: ServiceInstance) -> None:
        self.instance = instance
        self.zone = instance.zone
        self.outstanding = 0
        # Failures in a row, weighted: a dead instance fails fast, so it has the fewest calls
        # in flight and least-request balancing would pour traffic (and every retry) into it
        # until ejection. Counting each recent failure as ``FAILURE_WEIGHT`` calls in flight
        # steers new picks and retries elsewhere at once; one success clears it, and every
        # comparison it loses wears it down by one, so it is probed again soon.
        self.penalty = 0
        self.healthy = True
        self.outlier = OutlierState()

    @property
    def eligible(self) -> bool:
        """In rotation: not failing active health checks and not ejected."""
        return self.healthy and self.outlier.ejected_until is None

    def __repr__(self) -> str:
        return f"<Endpoint {self.instance.address} outstanding={self.outstanding}>"


FAILURE_WEIGHT = 2
"""How many calls in flight one consecutive failure weighs in ``PowerOfTwo``."""


class Pool:
    """The endpoints a balancer chooses from, and a round-robin ticket counter."""

    __slots__ = ("endpoints", "ticket")

    def __init__(self, endpoints: Sequence[Endpoint] = (), ticket: Callable[[], int] | None = None):
        self.endpoints = tuple(endpoints)
        self.ticket = ticket if ticket is not None else itertools.count().__next__


class Balancer(Protocol):
    """Chooses one endpoint of a non-empty pool."""

    def choose(self, pool: Pool, /) -> Endpoint: ...


class RoundRobin:
    """Each endpoint in turn."""

    __slots__ = ()

    def choose(self, pool: Pool, /) -> Endpoint:
        """The next endpoint after the one chosen last from this pool."""
        endpoints = pool.endpoints
        return endpoints[pool.ticket() % len(endpoints)]


class RandomBalancer:
    """A uniformly random endpoint."""

    __slots__ = ("_random",)

    def __init__(self, rng: Random | None = None) -> None:
        self._random = (rng if rng is not None else Random()).random

    def choose(self, pool: Pool, /) -> Endpoint:
        """Any endpoint, each as likely."""
        endpoints = pool.endpoints
        return endpoints[int(self._random() * len(endpoints))]


class PowerOfTwo:
    """Two distinct random endpoints; the one with fewer calls in flight wins (ties: the first).

    Recent consecutive failures count as extra calls in flight (see ``Endpoint.penalty``).
    """

    __slots__ = ("_random",)

    def __init__(self, rng: Random | None = None) -> None:
        self._random = (rng if rng is not None else Random()).random

    def choose(self, pool: Pool, /) -> Endpoint:
        """The less busy of two random endpoints."""
        endpoints = pool.endpoints
        n = len(endpoints)
        if n == 1:
            return endpoints[0]
        random = self._random
        i = int(random() * n)
        j = int(random() * (n - 1))
        if j >= i:
            j += 1
        a = endpoints[i]
        b = endpoints[j]
        if a.outstanding + a.penalty <= b.outstanding + b.penalty:
            if b.penalty:
                b.penalty -= 1  # each lost comparison wears a penalty down: no starvation
            return a
        if a.penalty:
            a.penalty -= 1
        return b


_NAMES: dict[str, Callable[[Random | None], Balancer]] = {
    "round_robin": lambda rng: RoundRobin(),
    "random": RandomBalancer,
    "p2c": PowerOfTwo,
    "power_of_two": PowerOfTwo,
}


def balancer_of(spec: Balancer | str | None, rng: Random | None = None) -> Balancer:
    """A balancer from an object or a name: ``"p2c"`` (default), ``"round_robin"``, ``"random"``."""
    if spec is None:
        return PowerOfTwo(rng)
    if isinstance(spec, str):
        make = _NAMES.get(spec)
        if make is None:
            known = ", ".join(repr(n) for n in _NAMES)
            raise ValueError(f"'balancer' must be a Balancer or one of {known}: {spec!r}")
        return make(rng)
    if not callable(getattr(spec, "choose", None)):
        raise ValueError(f"'balancer' must have a choose(pool) method: {spec!r}")
    return spec


def prefer_zone(
    endpoints: Iterable[Endpoint], zone: str | None, min_local: int = 1
) -> list[Endpoint]:
    """The endpoints in ``zone`` when at least ``min_local`` are, otherwise all of them.

    Zone preference keeps traffic (and its latency and cost) inside a zone while the zone can
    carry it, and spills over to every zone as a whole rather than trickling.
    """
    everyone = list(endpoints)
    if zone is None:
        return everyone
    local = [e for e in everyone if e.zone == zone]
    return local if len(local) >= min_local else everyone
