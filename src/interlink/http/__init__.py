"""Resilient HTTP between services: clients with per-service policies, and a server middleware.

``AsyncClient`` (aiohttp) and ``Client`` (httpx) run every call through the target service's
interlink ``Pipeline`` (timeout, retry with a shared budget, hedge, breaker, rate limit,
bulkhead), built once per service from its ``ServicePolicies`` (the live objects are its
``Downstream``), and propagate the deadline, correlation id and trace context;
``InterlinkMiddleware`` reads them back on the server side. See ``docs/sync.md``.
"""

from interlink.http._policies import Downstream, ServiceConfig, ServicePolicies, load_config
from interlink.http._response import Response
from interlink.http.client import AsyncClient, AsyncServiceClient, Client, ServiceClient
from interlink.http.middleware import InterlinkMiddleware

__all__ = [
    "AsyncClient",
    "AsyncServiceClient",
    "Client",
    "Downstream",
    "InterlinkMiddleware",
    "Response",
    "ServiceClient",
    "ServiceConfig",
    "ServicePolicies",
    "load_config",
]
