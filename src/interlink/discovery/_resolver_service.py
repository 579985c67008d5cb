"""What a ``Resolver`` keeps for one service: the cached endpoints, the pool in rotation, the
watch task and the outage bookkeeping.

A module of its own so that ``Picked`` and the resolver's parts (``_resolver_rotation``,
``_resolver_watch``) share this record without importing the resolver.
"""

from __future__ import annotations

import asyncio
import itertools

from interlink.discovery.balancer import Endpoint, Pool

__all__ = ["CachedService"]


class CachedService:
    """Everything the resolver keeps for one service."""

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
