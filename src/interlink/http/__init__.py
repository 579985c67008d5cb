"""Resilient HTTP between services: clients with per-service policies, and a server middleware.

``AsyncClient`` (aiohttp) and ``Client`` (httpx) run every call through the target service's
interlink ``Pipeline`` (timeout, retry with a shared budget, hedge, breaker, rate limit,
bulkhead) and propagate the deadline, correlation id and trace context; ``InterlinkMiddleware``
reads them back on the server side. See ``docs/sync.md``.
"""

from typing import TYPE_CHECKING, Any

from interlink.http._config import ServiceConfig, ServicePolicies, load_config
from interlink.http._response import Response
from interlink.http._service import Service
from interlink.http.client import AsyncClient, AsyncServiceClient
from interlink.http.middleware import InterlinkMiddleware

if TYPE_CHECKING:
    from interlink.http.sync import Client, ServiceClient

__all__ = [
    "AsyncClient",
    "AsyncServiceClient",
    "Client",
    "InterlinkMiddleware",
    "Response",
    "Service",
    "ServiceClient",
    "ServiceConfig",
    "ServicePolicies",
    "load_config",
]


def __getattr__(name: str) -> Any:
    # The sync client's engine (httpx) is imported only by code that uses it.
    if name in ("Client", "ServiceClient"):
        from interlink.http import sync

        return getattr(sync, name)
    raise AttributeError(f"module 'interlink.http' has no attribute {name!r}")
