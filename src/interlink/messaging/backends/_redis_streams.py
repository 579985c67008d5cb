"""The reading half of the Redis Streams backend: one subscription's reads (packed by the
``READ`` script while a backlog lasts, blocking ``XREADGROUP`` otherwise, the next batch read
ahead), claims of deliveries whose consumer died, and what is given back on stop.

Settling (acks, retries, dead letters) is ``Subscription``'s base class, in ``_redis_settling``;
the redis-py helpers are in ``_redis_calls``. ``RedisDelivery``, ``LOST``, ``own_connection``
and ``shielded`` stay importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from interlink.messaging.backend import Delivery
from interlink.messaging.backends._options import reconnect_delay
from interlink.messaging.backends._redis_calls import LOST, own_connection, shielded
from interlink.messaging.backends._redis_scripts import Entry, parse_batch
from interlink.messaging.backends._redis_settling import RedisDelivery, Settling

if TYPE_CHECKING:
    from interlink.messaging.backends.redis import RedisBackend

__all__ = [
    "LOST",
    "Entry",
    "RedisDelivery",
    "Subscription",
    "own_connection",
    "shielded",
]

#: A read under way: its task, whether it is a packed ``READ``, how many it asked for.
Read = tuple["asyncio.Future[Any]", bool, int]


class Subscription(Settling):
    """One ``subscribe()``: its consumer name, batched acks, delayed retries and claims."""

    def __init__(self, backend: RedisBackend, topic: str, group: str) -> None:
        super().__init__(backend, topic, group)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.cursors = [b"0-0", b"0-0"]
        self.read_ids: dict[Any, Any] = {self.streams[0]: ">", self.streams[1]: ">"}
        self.keys = {self.streams[0].encode(): 0, self.streams[1].encode(): 1}
        self.backlog = True  # read with the READ script (until a read comes back short)
        self.ahead: Read | None = None  # the next batch's read, started while a backlog lasts
        self.conn: Any = None  # the packed reads' own connection (see ``packed_read``)
        self.reading: asyncio.Future[Any] | None = None  # the last packed read on it

    # -- reading ------------------------------------------------------------------------

    async def claim(self, count: int) -> list[Entry]:
        """Take over deliveries idle past the visibility timeout (their consumer died)."""
        idle = int(self.backend.visibility_timeout * 1000)
        found: list[Entry] = []
        for source, stream in enumerate(self.streams):
            reply = await shielded(
                self.redis.xautoclaim(
                    stream, self.group, self.consumer, idle, self.cursors[source], count=count
                )
            )
            self.cursors[source] = reply[0]
            entries = [(eid, fields) for eid, fields in reply[1] if fields]
            gone = reply[2] if len(reply) > 2 else []
            if gone:  # trimmed away while pending: nothing left to deliver
                await shielded(self.redis.xack(stream, self.group, *gone))
            if not entries:
                continue
            pending = await shielded(
                self.redis.xpending_range(
                    stream,
                    self.group,
                    min=entries[0][0],
                    max=entries[-1][0],
                    count=len(entries) * 2,
                    consumername=self.consumer,
                )
            )
            times = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            found.extend((source, eid, fields, times.get(eid, 2)) for eid, fields in entries)
        return found

    async def release(self, rest: Sequence[Entry]) -> None:
        """Hand back fetched deliveries nobody took (same attempt count) and flush acks."""
        if rest:
            with contextlib.suppress(RedisError, OSError):
                async with self.redis.pipeline(transaction=True) as pipe:
                    for source, eid, fields, times in rest:
                        prior = int(fields.get(b"a", 0)) + times - 1
                        pipe.xadd(self.streams[1], {b"d": fields.get(b"d", b""), b"a": prior})
                        pipe.xack(self.streams[source], self.group, eid)
                        if source:
                            pipe.xdel(self.streams[source], eid)
                    await pipe.execute()
        with contextlib.suppress(RedisError, OSError):
            await self.flush()

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """New deliveries of both streams. While a backlog lasts (the last read was full)
        they come packed by the ``READ`` script; else from a blocking ``XREADGROUP``.
        Shielded; if the caller is cancelled while the read is under way, whatever it still
        returns is released at once."""
        return await self.received(self.start_read(count, block_ms))

    async def next_batch(self, prefetch: int, block_ms: int) -> list[Entry]:
        """The read started ahead, or a new one; then, while a backlog lasts, the next one is
        started (see ``deliveries``)."""
        half = prefetch // 2
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            found = await self.received(ahead)
        else:
            found = await self.read(half if self.backlog and half else prefetch, block_ms)
        if self.backlog and half:
            self.ahead = self.start_read(half, block_ms)
            try:
                await asyncio.sleep(0)  # its first step: the command goes out now
            except asyncio.CancelledError:  # what this read took must not wait out its lease
                self.backend.track(asyncio.ensure_future(self.release(found)))
                raise
        return found

    def start_read(self, count: int, block_ms: int) -> Read:
        """Start a ``read`` and return without waiting for it (``received`` waits)."""
        packed = self.backlog
        if packed:
            call: Awaitable[Any] = self.packed_read(count)
        else:
            call = self.redis.xreadgroup(self.group, self.consumer, self.read_ids, count, block_ms)
        task = asyncio.ensure_future(call)
        if packed:
            self.reading = task
        return task, packed, count

    async def packed_read(self, count: int) -> Any:
        """``READ`` on the subscription's own connection, which nothing else uses: its command
        is on the wire in the first step of the task reading ahead (through the pool, that
        took another task and two turns of the event loop), and the pool's checkout, retry
        wrapper and write timer are not paid per batch."""
        scripts = self.backend.scripts
        conn = self.conn
        if conn is None:
            conn = self.conn = own_connection(self.redis)
        command = conn.pack_command(
            "EVALSHA", scripts.read.sha, 2, *self.streams, self.group, self.consumer, count
        )
        try:
            async with asyncio.timeout(self.backend.socket_timeout):
                await conn.send_packed_command(command, check_health=False)
                return await conn.read_response()
        except NoScriptError:  # the server lost its scripts (a restart): the pool loads it
            return await scripts.read(keys=self.streams, args=[self.group, self.consumer, count])
        except TimeoutError as exc:  # as the pool's socket timeout would
            raise RedisTimeoutError(f"READ took over {self.backend.socket_timeout}s") from exc

    async def disconnect(self) -> None:
        """Close the packed reads' connection (it connects again if used again)."""
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect()

    async def received(self, read: Read) -> list[Entry]:
        """The entries of a started read (see ``read``)."""
        task, packed, count = read
        try:
            reply: Any = await asyncio.shield(task)
        except asyncio.CancelledError:
            if packed:  # no BLOCK: it ends soon, and what it read goes back at once
                self.abandon(read)
            else:
                task.cancel()
                task.add_done_callback(self._release_late)
            raise
        found = parse_batch(reply) if packed else self._entries(reply)
        self.backlog = len(found) >= count
        return found

    def abandon(self, read: Read) -> None:
        """Release what a started read returns, once it has (a ``READ`` is not cut off in the
        middle: its entries would wait out the visibility timeout in this consumer's pending
        list instead of going back at once)."""
        task, packed, _ = read
        self.backend.track(task)
        task.add_done_callback(self._release_packed if packed else self._release_late)

    def _entries(self, reply: Any) -> list[Entry]:
        keys = self.keys
        return [
            (keys[key], eid, fields, 1) for key, entries in reply or () for eid, fields in entries
        ]

    def _release_packed(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            return
        self.backend.track(asyncio.ensure_future(self.release(parse_batch(task.result()))))

    def _release_late(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            return
        self.backend.track(asyncio.ensure_future(self.release(self._entries(task.result()))))

    async def deliveries(self, prefetch: int) -> AsyncIterator[Delivery]:
        """The subscription's iterator: claimed, retried and new deliveries.

        While a backlog lasts, the next batch is read while this one is handed out: the
        server's time for a ``READ`` (as long as the client's for handing its batch out)
        overlaps the handling instead of adding to it. Each of the two then takes half of
        ``prefetch``, so no more than ``prefetch`` are fetched ahead.
        """
        backend = self.backend
        await shielded(backend.ensure_group(self.topic, self.group))
        self.promoter = asyncio.create_task(self.promote_forever())
        buffer: deque[Entry] = deque()
        claim_every = max(backend.visibility_timeout / 2, 0.05)
        next_claim = time.monotonic() + claim_every
        block = int(min(backend.block, claim_every) * 1000)
        failures = 0
        try:
            while True:
                try:
                    if time.monotonic() >= next_claim:
                        next_claim = time.monotonic() + claim_every
                        buffer.extend(await self.claim(prefetch))
                    if not buffer:
                        buffer.extend(await self.next_batch(prefetch, block))
                    failures = 0
                except LOST as exc:
                    failures += 1
                    await asyncio.sleep(reconnect_delay(failures, exc))
                    continue
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # The stream or group vanished (a server restarted without persistence).
                    backend.forget_group(self.topic, self.group)
                    await shielded(backend.ensure_group(self.topic, self.group))
                    continue
                while buffer:
                    source, eid, fields, times = buffer.popleft()
                    yield RedisDelivery(self, source, eid, fields, times)
        finally:
            # The subscription stays known to the backend: handlers still running ack
            # through it, and the backend's aclose() flushes those acks.
            self.stopped = True
            ahead, self.ahead = self.ahead, None
            if ahead is not None:
                self.abandon(ahead)
            promoter = self.promoter
            if promoter is not None:
                promoter.cancel()
                await asyncio.wait({promoter}, timeout=1.0)
            await self.release(list(buffer))
            reading = self.reading
            if reading is None or reading.done():  # else the backend's aclose() closes it
                await self.disconnect()
