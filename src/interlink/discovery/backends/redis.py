"""``redis://host:6379/0``: instances in Redis, expiring by the server's clock.

Per service, a sorted set holds each instance id scored by its expiry time in milliseconds of
the *Redis server's* clock (``TIME`` inside a Lua script, so clients with skewed clocks agree),
and a hash holds the instances' JSON. Every change is published on a per-service channel;
watchers wake on a message or when the next entry is due to expire, whichever comes first, so
an expired instance leaves every cache within milliseconds of its TTL without keyspace
notifications (which would need ``CONFIG SET`` on a shared server). Expired members are
removed by the next read; both keys expire after a day without writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from interlink.discovery.backends._shared import check_hosts, instance_of
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import BaseRegistry, Snapshot, snapshot_of, snapshots
from interlink.errors import InvalidURLError

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the redis:// registry needs redis-py: pip install 'interlink[redis]'"
    ) from exc

__all__ = ["RedisRegistry"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_PUT = (
    _NOW
    + """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local oldexp = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if (not old) or old ~= ARGV[2] or (not oldexp) or tonumber(oldexp) <= now then
    redis.call('PUBLISH', KEYS[3], ARGV[1])
end
return now
"""
)

_GET = (
    _NOW
    + """
local exp = redis.call('ZSCORE', KEYS[1], ARGV[1])
if exp and tonumber(exp) > now then return redis.call('HGET', KEYS[2], ARGV[1]) end
return false
"""
)

_LIVE = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    redis.call('HDEL', KEYS[2], unpack(dead))
end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
local out = {tostring(now)}
for i = 1, #live, 2 do
    local data = redis.call('HGET', KEYS[2], live[i])
    if data then
        table.insert(out, live[i])
        table.insert(out, data)
        table.insert(out, live[i + 1])
    end
end
return out
"""
)

_REMOVE = """
local gone = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if gone > 0 then redis.call('PUBLISH', KEYS[3], ARGV[1]) end
return gone
"""

_IDLE_MS = 24 * 3600 * 1000


class RedisRegistry(BaseRegistry):
    """Instances in Redis under ``prefix`` (default ``interlink:discovery:``)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "interlink:discovery:",
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
        interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.prefix = prefix
        self.interval = interval
        common: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            # One immediate retry rides over a pooled connection that a server restart broke;
            # more would only delay the error the resolver is waiting to act on.
            "retry": Retry(NoBackoff(), 1),
        }
        self._redis = aioredis.from_url(url, socket_timeout=timeout, **common)
        # Subscriptions wait for minutes between messages: no read timeout on their client.
        self._subs = aioredis.from_url(url, **common)
        self._put_script = self._redis.register_script(_PUT)
        self._get_script = self._redis.register_script(_GET)
        self._live_script = self._redis.register_script(_LIVE)
        self._remove_script = self._redis.register_script(_REMOVE)

    def _keys(self, service: str) -> list[str]:
        base = f"{self.prefix}{service}"
        return [f"{base}:exp", f"{base}:data", f"{base}:changes"]

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisRegistry:
        """``redis://[user:password@]host:port/db[?prefix=app:discovery:]`` (or ``rediss://``);
        options as the class. ``prefix`` in the URL keeps systems that share a Redis apart
        where only a URL can be configured (an environment variable, a config file).

        Raises ``InvalidURLError`` for a port outside [1, 65535], a database that is not a
        number (redis-py would quietly use database 0), or an empty ``prefix``.
        """
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for key, value in query if key == "prefix"]
        if prefixes:
            if not prefixes[-1]:
                raise InvalidURLError(f"'prefix' in the registry URL must not be empty: {url!r}")
            options.setdefault("prefix", prefixes[-1])
            rest = urlencode([(key, value) for key, value in query if key != "prefix"])
            url = urlunsplit(parts._replace(query=rest))
            parts = urlsplit(url)
        check_hosts(url, parts.netloc)
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise InvalidURLError(f"the database {db!r} of 'url' must be a number: {url!r}")
        return cls(url, **options)

    def _record(self, service: str, instance_id: object) -> str:
        name = (
            instance_id.decode(errors="replace") if isinstance(instance_id, bytes) else instance_id
        )
        return f"{self.prefix}{service}:data[{name}]"

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        data = await self._get_script(keys=self._keys(service)[:2], args=[instance_id])
        return instance_of(service, self._record(service, instance_id), data) if data else None

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        await self._put_script(
            keys=self._keys(instance.service),
            args=[instance.instance_id, instance.to_json(), int(ttl * 1000), _IDLE_MS],
        )
        return None

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        await self._remove_script(keys=self._keys(instance.service), args=[instance.instance_id])

    async def _live(self, service: str) -> tuple[Snapshot, float | None]:
        try:
            reply = await self._live_script(keys=self._keys(service)[:2], args=[])
        except ResponseError as exc:  # e.g. WRONGTYPE: the keys hold something else
            raise ValueError(f"redis refused to read the keys of {service!r}: {exc}") from exc
        now = int(reply[0])
        found = []
        expires = None
        for i in range(1, len(reply), 3):
            instance = instance_of(service, self._record(service, reply[i]), reply[i + 1])
            if instance is not None:
                found.append(instance)
                expiry = float(reply[i + 2])
                expires = expiry if expires is None else min(expires, expiry)
        return snapshot_of(found), (None if expires is None else (expires - now) / 1000.0)

    async def probe(self) -> bool:
        """Whether Redis answers a ``PING`` now."""
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The instances of ``service`` that have not expired by the server's clock."""
        check_service(service)
        return list((await self._live(service))[0])

    async def services(self) -> list[str]:
        """The services with an entry (live or not yet cleaned up), by scanning the prefix."""
        found = set()
        async for key in self._redis.scan_iter(match=f"{self.prefix}*:exp", count=500):
            text = key.decode() if isinstance(key, bytes) else str(key)
            found.add(text[len(self.prefix) : -len(":exp")])
        return sorted(found)

    async def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """Snapshots on every published change and at each expiry."""
        check_service(service)
        pubsub = self._subs.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys(service)[2])

            async def fetch() -> tuple[Snapshot, float | None]:
                return await self._live(service)

            async def wait(seconds: float) -> None:
                message = await pubsub.get_message(timeout=seconds)
                while message is not None:  # coalesce a burst into one re-read
                    message = await pubsub.get_message(timeout=0.0)

            async for snap in snapshots(fetch, wait, interval=self.interval):
                yield snap
        finally:
            await asyncio.shield(_close_pubsub(pubsub))

    async def aclose(self) -> None:
        """Deregister this object's instances and close both connection pools."""
        await self._close_leases()
        await self._redis.aclose()
        await self._subs.aclose()


async def _close_pubsub(pubsub: Any) -> None:
    try:
        # Bounded: closing a subscription whose read was cancelled mid-way can wait on that
        # read's connection forever (seen after a server restart); the socket is dropped anyway.
        async with asyncio.timeout(1.0):
            await pubsub.aclose()
    except Exception:  # the server may be gone; the socket is dropped either way
        return
