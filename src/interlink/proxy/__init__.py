"""The proxy engine: an HTTP/1.1 data plane on asyncio protocols and llhttp.

One small package, one module per stage, each readable alone::

    http1       client connections: parsing (httptools), limits, smuggling checks, timeouts
    router      host / path prefix or template / method / header matching, path normalisation
    auth        JWT (HS256, RS256, ES256; inline keys or JWKS) and hashed API keys
    limits      token-bucket rate limits, in memory or shared through Redis
    upstreams   where a route goes: fixed URLs or a discovery service
    upstream    pooled upstream connections, stale-connection detection
    engine      the request's way through all of the above, under the route's policies
    metrics     per-route counters in the Prometheus text format
    errors      the JSON errors the proxy answers with, and their reasons

The gateway (``interlink.gateway``) is one configuration of this engine. Needs the ``gateway``
extra: ``pip install 'interlink[gateway]'``.
"""

from interlink.proxy.auth import ApiKey, Authenticator, Identity, JwtKey, Requirement, hash_api_key
from interlink.proxy.engine import HOP_BY_HOP, Cors, Policies, Proxy, RouteSpec, RouteTable
from interlink.proxy.errors import REASONS, ProxyError
from interlink.proxy.http1 import Limits
from interlink.proxy.limits import Limiter, LimitRule, MemoryBuckets, RedisBuckets
from interlink.proxy.metrics import ProxyMetrics
from interlink.proxy.router import Match, Route, Router, normalise_path
from interlink.proxy.upstream import PoolLimits, UpstreamPool
from interlink.proxy.upstreams import FixedUpstream, ServiceUpstream

__all__ = [
    "HOP_BY_HOP",
    "REASONS",
    "ApiKey",
    "Authenticator",
    "Cors",
    "FixedUpstream",
    "Identity",
    "JwtKey",
    "LimitRule",
    "Limiter",
    "Limits",
    "Match",
    "MemoryBuckets",
    "Policies",
    "PoolLimits",
    "Proxy",
    "ProxyError",
    "ProxyMetrics",
    "RedisBuckets",
    "Requirement",
    "Route",
    "RouteSpec",
    "RouteTable",
    "Router",
    "ServiceUpstream",
    "UpstreamPool",
    "hash_api_key",
    "normalise_path",
]
