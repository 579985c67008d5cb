"""Redis Streams backend: ``redis://[:password@]host:6379/0`` (``rediss://`` for TLS).

Layout (``prefix`` defaults to ``interlink``):

- ``<prefix>:<topic>`` — the topic's stream: an entry's ``data`` field is the message body,
  its ``ce_*`` and ``content-type`` fields the CloudEvents attributes, other fields the user's
  headers (``interlink.messaging.envelope``); each group is a consumer group on it. The topic's
  first group starts at the beginning of the stream, a later group at its end;
- ``<prefix>:<topic>#retry:<group>`` — the group's retry stream: messages coming back after a
  retry delay (or released at shutdown), read in the same ``XREADGROUP`` as the topic;
- ``<prefix>:<topic>#delay:<group>`` — a sorted set of messages waiting for their retry delay,
  scored by due time (the server's clock); each consumer moves due ones into the retry stream
  with one Lua script, so a delay survives any consumer's crash. A retry copy carries its
  fields with ``ce_attempt``, the delivery it starts at;
- ``<prefix>:<topic>.dlq`` — the dead letters (``encode_dead_letter`` records).

Every delivery stays in the group's pending list until acked, so a consumer that dies loses
nothing: another consumer of the group claims its deliveries with ``XAUTOCLAIM`` once they have
been idle for ``visibility_timeout`` seconds (a handler running longer than that may be
delivered twice). ``nack`` and ``dead_letter`` are one atomic step each (a script or
``MULTI``): the copy is written and the original acked together. Acks are batched: one
``XACK`` per stream for all acks of the moment, sent in the background. A batch is published
by a Lua script (one command per 256 messages), and a backlog is read by one (``XREADGROUP``
with a flat reply): see ``_scripts`` for why.

A publish that finds nobody else publishing goes out on a connection of its own (the
publishing lane, ``_Lane``): the command head packed once per topic, written and its reply read
straight through the connection, bounded by one ``asyncio.timeout``. Through the pool,
``Redis.xadd`` costs the client about as much CPU as the round trip takes on a local server
(pool checkout and return under a lock, the retry wrapper, packing every argument, a task per
socket write to time it), and a serial publisher waits for all of it on every message.
Publishes that overlap take the pool, as does one whose lane connection broke (sent once more
there: the same fields, so the same message id).

Durability is the server's: a publish is confirmed when Redis has applied the ``XADD``; with
``appendonly yes`` and ``appendfsync always`` that is on disk, with ``everysec`` up to a second
of confirmed messages can be lost in a crash, without persistence all of them.

URL options: ``visibility_timeout`` (s, 30), ``maxlen`` (approximate ``MAXLEN ~`` trimming of
topic streams; default none: a trimmed message is gone even for a group that did not read
it), ``prefix`` (``interlink``), ``block`` (s, 2: longest blocking read), ``socket_timeout``
(s, 10), ``poll`` (s, 1: how often another consumer's due retries are looked for).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

from interlink.messaging.backends._base import UrlBackend, client_library, replays, stored_letter

with client_library("redis", "redis", "redis"):
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError

from interlink.messaging.backend import ConsumerLag, Delivery, PublishError
from interlink.messaging.backends._options import close_at_loop_end, stop_keeper
from interlink.messaging.backends.redis._calls import own_connection
from interlink.messaging.backends.redis._connection import RedisConnection
from interlink.messaging.backends.redis._subscription import Subscription
from interlink.messaging.envelope import (
    FIELDS,
    Binding,
    DeadLetter,
    OutgoingMessage,
)

__all__ = ["RedisBackend"]

log = logging.getLogger("interlink.messaging.redis")

_CHUNK = 256  # messages per APPEND script call
_HEADS = 1024  # packed XADD heads remembered, one per topic


def _bulk(arg: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(arg), arg)


_ID = FIELDS.id


def _append_args(items: Sequence[OutgoingMessage]) -> list[Any]:
    """``APPEND``'s arguments after MAXLEN and the id field's name: the distinct sets of
    fields the messages share (everything but data and id), then set, id and data each."""
    sets: dict[tuple[tuple[str, str], ...], int] = {}
    per_message: list[Any] = []
    for item in items:
        shared = tuple((n, v) for n, v in item.headers.items() if n != _ID)
        number = sets.get(shared)
        if number is None:
            number = sets[shared] = len(sets) + 1
        per_message += (number, item.message_id, item.data)
    args: list[Any] = [len(sets)]
    for shared in sets:
        args.append(2 * len(shared))
        for name, value in shared:
            args += (name, value)
    return args + per_message


class _Lane:
    """One connection for publishes that come one at a time (see the module docstring).

    Not safe to share: the backend lends it to one publish at a time (``busy``). A failure
    leaves the connection closed by redis-py (it disconnects on any error or cancellation in
    the middle of a command, so no reply is ever read by the wrong command); the next use
    connects again.
    """

    __slots__ = ("busy", "conn", "heads", "key", "maxlen", "timeout")

    def __init__(
        self,
        client: aioredis.Redis,
        key: Callable[[str], str],
        maxlen: int | None,
        timeout: float,
    ) -> None:
        self.conn: Any = own_connection(client)
        self.busy = False
        self.heads: dict[str, tuple[int, bytes]] = {}
        self.key = key  # the backend's topic -> stream key
        self.maxlen = maxlen
        self.timeout = timeout

    def _head(self, topic: str) -> tuple[int, bytes]:
        """``XADD <key> [MAXLEN ~ n] * data`` packed, up to the data's length, and its count
        of arguments."""
        args = [b"XADD", self.key(topic).encode()]
        if self.maxlen is not None:
            args += [b"MAXLEN", b"~", b"%d" % self.maxlen]
        args += [b"*", b"data"]
        head = (len(args) + 1, b"".join(map(_bulk, args)) + b"$")
        if len(self.heads) < _HEADS:
            self.heads[topic] = head
        return head

    async def xadd(self, topic: str, data: bytes, headers: Mapping[str, str]) -> None:
        count, head = self.heads.get(topic) or self._head(topic)
        parts = [
            b"*%d\r\n" % (count + 2 * len(headers)),
            head,
            b"%d\r\n" % len(data),
            data,
            b"\r\n",
        ]
        for name, value in headers.items():
            parts.append(_bulk(name.encode()))
            parts.append(_bulk(value.encode()))
        conn = self.conn
        async with asyncio.timeout(self.timeout):
            await conn.send_packed_command(b"".join(parts), check_health=False)
            await conn.read_response()

    async def aclose(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.conn.disconnect()


class RedisBackend(UrlBackend):
    """Messages in Redis Streams with consumer groups (see the module docstring)."""

    scheme: ClassVar[str] = "redis"
    binding: ClassVar[Binding] = FIELDS

    def __init__(self, url: str) -> None:
        self.connection = RedisConnection(url)
        self._lane: _Lane | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._subs: set[Subscription] = set()

    @property
    def visibility_timeout(self) -> float:
        """Seconds before another consumer claims a dead consumer's deliveries."""
        return self.connection.visibility_timeout

    @property
    def client(self) -> aioredis.Redis:
        """The connection pool's client."""
        return self.connection.client

    async def connect(self) -> None:
        """Create the pool and check the server answers."""
        conn = self.connection
        if conn.connected:
            return
        client = await conn.connect()
        self._lane = _Lane(client, conn.key, conn.maxlen, conn.socket_timeout)
        self._keeper = close_at_loop_end(self.aclose)

    async def aclose(self) -> None:
        """Flush batched acks, forget our idle consumer names, close the pool."""
        conn, subs = self.connection, list(self._subs)
        if not conn.connected:
            return
        keeper, self._keeper = self._keeper, None
        stop_keeper(keeper)
        await conn.settle_late(2.0)
        for sub in subs:  # every subscription of this connection, stopped ones included
            flusher = sub.flusher
            if flusher is not None:
                with contextlib.suppress(RedisError, OSError):
                    await flusher
            with contextlib.suppress(RedisError, OSError):
                await sub.flush()
            await sub.disconnect()
        lane, self._lane = self._lane, None
        self._subs.clear()
        if lane is not None:
            await lane.aclose()
        await conn.aclose()

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """``XADD``: confirmed when the server applied it (durable as its persistence)."""
        lane = self._lane
        if lane is not None and not lane.busy:
            lane.busy = True
            try:
                await lane.xadd(topic, message.data, message.headers)
                return
            except (ResponseError, TimeoutError) as exc:  # refused, or no answer in time
                raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
            except (RedisError, OSError):
                pass  # the connection broke (now closed): once more through the pool
            finally:
                lane.busy = False
        client = await self._connected()
        try:
            fields: dict[Any, Any] = {b"data": message.data, **message.headers}
            await client.xadd(self.connection.key(topic), fields, maxlen=self.connection.maxlen)
        except (RedisError, OSError) as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """The ``APPEND`` script, one command per ``_CHUNK`` messages (in order, for the
        order per key): a script blocks the server while it runs, so a chunk stays around a
        millisecond of its time."""
        await self.connect()
        conn = self.connection
        keys, maxlen = [conn.key(topic)], conn.maxlen or 0
        script = conn.scripts.append
        try:
            for start in range(0, len(items), _CHUNK):
                args = _append_args(items[start : start + _CHUNK])
                await script(keys=keys, args=[maxlen, _ID, *args])
        except (RedisError, OSError) as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc

    # -- consuming ----------------------------------------------------------------------

    async def _connected(self) -> aioredis.Redis:
        await self.connect()
        return self.connection.client

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the group on the topic's stream and on its own retry stream."""
        await self.connection.ensure_group(topic, group)

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries for ``group``: new ones, retries and claimed ones, ``prefetch`` a read."""
        sub = Subscription(self.connection, topic, group)
        self._subs.add(sub)
        return sub.deliveries(max(1, prefetch))

    # -- the DLQ and topics -------------------------------------------------------------

    async def _letters(self, topic: str, limit: int | None) -> list[tuple[bytes, DeadLetter]]:
        client = await self._connected()
        key = self.connection.key(f"{topic}.dlq")
        found: list[tuple[bytes, DeadLetter]] = []
        start: bytes | str = "-"
        while limit is None or len(found) < limit:
            page: Any = await client.xrange(key, min=start, max="+", count=500)
            for eid, fields in page:
                letter = stored_letter(fields.get(b"d", b""), log, f"redis: {key!r}")
                if letter is not None:
                    found.append((eid, letter))
            if len(page) < 500:
                break
            start = b"(" + page[-1][0]
        return found if limit is None else found[:limit]

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        return [letter for _, letter in await self._letters(topic, limit)]

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish each chosen message once (however many letters hold its id) and
        delete its letters from the DLQ, each publish and delete in one script."""
        await self.connect()
        conn = self.connection
        dlq = conn.key(f"{topic}.dlq")
        count = 0
        for replay in replays(await self._letters(topic, None), ids, FIELDS):
            first, *others = replay.handles
            fields = [b"data", replay.letter.data]
            for name, value in replay.headers.items():
                fields += (name.encode(), value.encode())
            count += int(
                await conn.scripts.replay(
                    keys=[dlq, conn.key(topic)], args=[first, conn.maxlen or 0, *fields]
                )
            )
            if others:
                await conn.client.xdel(dlq, *others)
        return count

    async def groups(self, topic: str) -> list[str]:
        """The groups of the topic's stream (``XINFO GROUPS``)."""
        client = await self._connected()
        try:
            found = await client.xinfo_groups(self.connection.key(topic))
        except ResponseError:  # no such stream yet
            return []
        return sorted(_text(g.get("name")) for g in found)

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """From ``XINFO GROUPS``: the group's pending entries (delivered, not acknowledged)
        and its ``lag`` (not delivered yet) on the topic's stream and on its retry stream,
        plus the retries waiting for their delay; the oldest's age from its stream id (the
        publish time in ms)."""
        client = await self._connected()
        key = self.connection.key(topic)
        pending = 0
        oldest: list[object] = []
        for stream in (key, f"{key}#retry:{group}"):
            try:
                groups = await client.xinfo_groups(stream)
            except ResponseError:  # no such stream yet
                continue
            info = next((g for g in groups if _text(g.get("name")) == group), None)
            if info is None:
                continue
            pending += int(info.get("pending") or 0) + int(info.get("lag") or 0)
            if stream == key:
                if info.get("pending"):
                    summary = await client.xpending(stream, group)
                    if summary.get("min"):
                        oldest.append(summary["min"])
                elif info.get("lag"):
                    after = _text(info.get("last-delivered-id")) or "0-0"
                    first = await client.xrange(stream, f"({after}", "+", count=1)
                    if first:
                        oldest.append(first[0][0])
        pending += int(await client.zcard(f"{key}#delay:{group}"))
        age = None
        if oldest:
            ms = min(int(_text(i).split("-")[0]) for i in oldest)
            age = max(0.0, time.time() - ms / 1000)
        return ConsumerLag(topic=topic, group=group, pending=pending, oldest_age=age)

    async def dlq_count(self, topic: str) -> int:
        """``XLEN`` of the DLQ stream."""
        client = await self._connected()
        return int(await client.xlen(self.connection.key(f"{topic}.dlq")))

    async def dlq_purge(self, topic: str) -> int:
        """Delete the DLQ stream; returns how many it held."""
        client = await self._connected()
        key = self.connection.key(f"{topic}.dlq")
        async with client.pipeline(transaction=True) as pipe:
            pipe.xlen(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
        return int(count)

    async def topics(self) -> list[str]:
        """Every stream under the prefix that is a topic or a DLQ (not a group's retry stream)."""
        client = await self._connected()
        prefix = self.connection.prefix
        start = len(prefix) + 1
        names = set()
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000, _type="stream"):
            name = key.decode()[start:]
            if "#" not in name:
                names.add(name)
        return sorted(names)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
