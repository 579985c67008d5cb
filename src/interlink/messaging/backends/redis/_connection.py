"""One Redis Streams connection: the URL's options, the pool's client and the Lua scripts on
it, the consumer groups made, and the background calls still running. The backend
(``interlink.messaging.backends.redis``) and its subscriptions all work through one
``RedisConnection``."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from interlink.messaging.backend import BackendUnavailable, redact
from interlink.messaging.backends._options import (
    UrlOptions,
    connect_failure,
)
from interlink.messaging.backends.redis._scripts import APPEND, NACK, PROMOTE, READ, REPLAY

__all__ = ["RedisConnection"]


class RedisConnection:
    """The pool, its scripts and the options of one ``redis://`` URL."""

    def __init__(self, url: str) -> None:
        opts = UrlOptions(url, "redis")
        self.url = url
        self.visibility_timeout = opts.number("visibility_timeout", 30.0, minimum=0.001)
        self.maxlen = opts.integer("maxlen", None, minimum=1)
        self.prefix = opts.text("prefix", "interlink")
        self.block = opts.number("block", 2.0, minimum=0.001)
        self.socket_timeout = opts.number("socket_timeout", 10.0, minimum=0.001)
        self.poll = opts.number("poll", 1.0, minimum=0.001)
        self.dlq_max_age, self.dlq_max_count = opts.dlq_retention()
        opts.done()
        self._base = opts.base
        self._client: aioredis.Redis | None = None
        self._groups: set[tuple[str, str]] = set()
        self._late: set[asyncio.Future[Any]] = set()
        self.scripts: Any = None  # the Lua scripts, registered on connect

    @property
    def connected(self) -> bool:
        """Whether the pool exists (``connect`` ran and ``aclose`` did not)."""
        return self._client is not None

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool's client."""
        if self._client is None:
            raise BackendUnavailable(redact(self.url), "not connected")
        return self._client

    async def connect(self) -> aioredis.Redis:
        """Create the pool and check the server answers; the client."""
        if self._client is not None:
            return self._client
        client = aioredis.Redis.from_url(
            self._base,
            socket_timeout=max(self.socket_timeout, self.block + 1.0),
            socket_connect_timeout=self.socket_timeout,
        )
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            await client.aclose()
            reason = connect_failure(exc, tried=redact(self._base), within=self.socket_timeout)
            raise BackendUnavailable(redact(self.url), reason) from exc
        self.scripts = SimpleNamespace(
            append=client.register_script(APPEND),
            nack=client.register_script(NACK),
            promote=client.register_script(PROMOTE),
            read=client.register_script(READ),
            replay=client.register_script(REPLAY),
        )
        self._client = client
        return client

    async def aclose(self) -> None:
        """Close the pool (the caller flushed what had to be flushed first)."""
        client, self._client = self._client, None
        self._groups.clear()
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    def key(self, topic: str) -> str:
        """The stream of ``topic`` (or of ``<topic>.dlq``)."""
        return f"{self.prefix}:{topic}"

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the group on the topic's stream and on its own retry stream."""
        if (topic, group) in self._groups:
            return
        client = await self.connect()
        stream = self.key(topic)
        try:
            first = not await client.xinfo_groups(stream)
        except ResponseError:  # no such stream yet
            first = True
        for key, start in ((stream, "0" if first else "$"), (f"{stream}#retry:{group}", "0")):
            try:
                await client.xgroup_create(key, group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups.add((topic, group))

    def forget_group(self, topic: str, group: str) -> None:
        """The group is gone on the server (a restart without persistence): create it anew."""
        self._groups.discard((topic, group))

    def track(self, task: asyncio.Future[Any]) -> None:
        """Keep a background release (or a read whose entries it will release) alive until it
        is done: ``settle_late`` waits for it."""
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def settle_late(self, within: float) -> None:
        """Wait up to ``within`` seconds for the tracked background calls (a read that ends
        may start a release: those are waited for too)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        while self._late and loop.time() < until:
            await asyncio.wait(set(self._late), timeout=until - loop.time())
