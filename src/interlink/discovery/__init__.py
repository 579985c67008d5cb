"""Service discovery and client-side load balancing.

Servers announce themselves with ``await registry.register(instance)`` (or the helpers in
``interlink.discovery.serve``); clients resolve names with a ``Resolver``, which keeps a
watched local cache so that ``resolver.pick("orders")`` never waits on the network, balances
with power of two choices, and ejects instances that keep failing. See ``docs/discovery.md``.

Only the standard library is imported here; a backend's client library is imported when its
URL is first used.
"""

from interlink.discovery.balancer import (
    Balancer,
    Endpoint,
    Pool,
    PowerOfTwo,
    RandomBalancer,
    RoundRobin,
)
from interlink.discovery.instance import ServiceInstance
from interlink.discovery.outlier import OutlierDetector, OutlierOptions
from interlink.discovery.registry import DEFAULT_TTL, Lease, Registry, Snapshot, from_url
from interlink.discovery.resolver import Picked, Resolver, ResolverStats
from interlink.errors import NoInstancesError

__all__ = [
    "DEFAULT_TTL",
    "Balancer",
    "Endpoint",
    "Lease",
    "NoInstancesError",
    "OutlierDetector",
    "OutlierOptions",
    "Picked",
    "Pool",
    "PowerOfTwo",
    "RandomBalancer",
    "Registry",
    "Resolver",
    "ResolverStats",
    "RoundRobin",
    "ServiceInstance",
    "Snapshot",
    "from_url",
]
