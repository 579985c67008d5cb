"""Service discovery and client-side load balancing.

Servers announce themselves with ``await registry.register(instance)`` (or the helpers in
``interlink.discovery.serve``); clients resolve names with a ``Resolver``, which keeps a
watched local cache so that ``resolver.pick("orders")`` never waits on the network, balances
with power of two choices, and ejects instances that keep failing. ``Registry.from_url(url)``
opens a registry by URL. ``Picker`` is what the HTTP and gRPC clients accept to choose their
instances. See ``docs/discovery.md``.

Only the standard library is imported here; a backend's client library is imported when its
URL is first used.
"""

from interlink.discovery.balancer import Balancer, Endpoint, Pool
from interlink.discovery.instance import ServiceInstance
from interlink.discovery.outlier import OutlierOptions
from interlink.discovery.registry import Lease, Registry, Snapshot
from interlink.discovery.resolver import Address, Picked, Picker, Resolver, ResolverStats
from interlink.errors import InvalidURLError, NoInstancesError

__all__ = [
    "Address",
    "Balancer",
    "Endpoint",
    "InvalidURLError",
    "Lease",
    "NoInstancesError",
    "OutlierOptions",
    "Picked",
    "Picker",
    "Pool",
    "Registry",
    "Resolver",
    "ResolverStats",
    "ServiceInstance",
    "Snapshot",
]
