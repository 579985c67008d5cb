"""One Redis Streams subscription: its reads (packed by the ``READ`` script while a backlog
lasts, blocking ``XREADGROUP`` otherwise, the next batch read ahead), claims of deliveries whose
consumer died, what is given back on stop; its settling (acks batched into one ``XACK``,
retries at once into the group's retry stream or through the delay set and the task that
promotes them when due, dead letters); and ``RedisDelivery``, which settles through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from interlink.messaging.backend import Delivery
from interlink.messaging.backends._base import Received, letter_of
from interlink.messaging.backends._options import reconnect_delay
from interlink.messaging.backends.redis._calls import LOST, own_connection, shielded
from interlink.messaging.backends.redis._connection import RedisConnection
from interlink.messaging.backends.redis._scripts import Entry, pack, parse_batch
from interlink.messaging.envelope import (
    FIELDS,
    Envelope,
    encode_dead_letter,
    read,
)

__all__ = ["RedisDelivery", "Subscription"]

log = logging.getLogger("interlink.messaging.redis")

#: A read under way: its task, whether it is a packed ``READ``, how many it asked for.
Read = tuple["asyncio.Future[Any]", bool, int]


class Subscription:
    """One ``subscribe()``: its consumer name, batched acks, delayed retries and claims."""

    def __init__(self, backend: RedisConnection, topic: str, group: str) -> None:
        self.stopped = False
        self.backend = backend
        self.redis = backend.client
        self.topic = topic
        self.group = group
        prefix = backend.prefix
        self.streams = (f"{prefix}:{topic}", f"{prefix}:{topic}#retry:{group}")
        self.delays = f"{prefix}:{topic}#delay:{group}"
        self.acks: tuple[list[bytes], list[bytes]] = ([], [])
        self.flusher: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.next_due: float | None = None
        self.promoter: asyncio.Task[None] | None = None
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
                        # not handled: its copy starts at the attempt this delivery was
                        attempt = attempt_of(fields, times)
                        pipe.xadd(self.streams[1], with_attempt(fields, attempt))
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

    # -- settling -----------------------------------------------------------------------

    def ack(self, source: int, entry_id: bytes) -> None:
        self.acks[source].append(entry_id)
        if self.flusher is None:
            self.flusher = asyncio.create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # gather the acks of this moment into one XACK
        try:
            await self.flush()
        finally:
            self.flusher = None
            if self.acks[0] or self.acks[1]:  # acked while the last XACK was on its way
                self.flusher = asyncio.create_task(self._flush_soon())

    async def flush(self) -> None:
        failures = 0
        # Retry a lost connection for as long as the ack still matters: once the visibility
        # timeout has passed, the message is redelivered anyway.
        give_up = time.monotonic() + self.backend.visibility_timeout / 2
        while self.acks[0] or self.acks[1]:
            main, retry = self.acks
            self.acks = ([], [])
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if main:
                        pipe.xack(self.streams[0], self.group, *main)
                    if retry:
                        pipe.xack(self.streams[1], self.group, *retry)
                        pipe.xdel(self.streams[1], *retry)
                    await pipe.execute()
            except LOST as exc:
                failures += 1
                self.acks[0].extend(main)
                self.acks[1].extend(retry)
                if time.monotonic() >= give_up:
                    # Unacked, they come back after the visibility timeout: at least once.
                    log.warning(
                        "redis: could not ack %d deliveries: %r", len(main) + len(retry), exc
                    )
                    self.acks = ([], [])
                    return
                await asyncio.sleep(reconnect_delay(failures, exc))

    async def retry(
        self,
        source: int,
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        attempt: int,
        delay: float,
    ) -> None:
        """Back later with ``attempt + 1``: now into the retry stream, or via the delay set."""
        stream = self.streams[source]
        copy = with_attempt(fields, attempt + 1)
        if delay <= 0:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.streams[1], copy)
                pipe.xack(stream, self.group, entry_id)
                if source:
                    pipe.xdel(stream, entry_id)
                await pipe.execute()
            return
        member = b"%d%s|" % (source, entry_id) + pack([x for pair in copy.items() for x in pair])
        await self.backend.scripts.nack(
            keys=[self.delays, stream],
            args=[self.group, entry_id, int(delay * 1000), member, source],
        )
        due = time.monotonic() + delay
        if self.next_due is None or due < self.next_due:
            self.next_due = due
            self.wake.set()

    async def dead(self, source: int, entry_id: bytes, record: bytes) -> None:
        stream = self.streams[source]
        dlq = f"{self.backend.prefix}:{self.topic}.dlq"
        oldest_ms = int((time.time() - self.backend.dlq_max_age) * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            # the retention: at most dlq_max_count letters, none older than dlq_max_age
            pipe.xadd(dlq, {b"d": record}, maxlen=self.backend.dlq_max_count, approximate=False)
            pipe.xtrim(dlq, minid=f"{max(oldest_ms, 0)}-0", approximate=False)
            pipe.xack(stream, self.group, entry_id)
            if source:
                pipe.xdel(stream, entry_id)
            await pipe.execute()

    # -- delayed retries ----------------------------------------------------------------

    async def promote_forever(self) -> None:
        """Move due retries into the retry stream (which wakes the blocked read): at the
        next due time this process knows of, and every ``poll`` seconds for the others'."""
        failures = 0
        poll = self.backend.poll
        while not self.stopped:
            self.wake.clear()
            wait = poll
            if self.next_due is not None:
                wait = min(wait, max(0.0, self.next_due - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()
            if self.next_due is not None and self.next_due > time.monotonic():
                continue  # woken for an earlier due time: recompute the wait
            try:
                moved, next_ms = 500, -1
                while moved == 500 and not self.stopped:
                    moved, next_ms = await shielded(
                        self.backend.scripts.promote(
                            keys=[self.delays, self.streams[1]], args=[500]
                        )
                    )
                failures = 0
                self.next_due = None if next_ms < 0 else time.monotonic() + next_ms / 1000
            except LOST as exc:
                failures += 1
                await asyncio.sleep(reconnect_delay(failures, exc))

    # -- the iterator ---------------------------------------------------------------------

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


_DATA = b"data"
_ATTEMPT = FIELDS.attempt.encode()
_PREFIX = FIELDS.prefix.encode()


def attempt_of(fields: Mapping[bytes, bytes], times: int) -> int:
    """The delivery number of an entry delivered ``times`` times: a retry copy starts at the
    attempt its ``ce_attempt`` field names (a foreign or garbled value counts as 1)."""
    value = fields.get(_ATTEMPT)
    start = int(value) if value is not None and value.isdigit() and int(value) >= 1 else 1
    return start + times - 1


def with_attempt(fields: Mapping[bytes, bytes], attempt: int) -> dict[Any, Any]:
    """The fields of a copy whose first delivery is number ``attempt``."""
    copy: dict[Any, Any] = dict(fields)
    copy[_ATTEMPT] = b"%d" % attempt
    return copy


def message_of(
    fields: Mapping[bytes, bytes], fallback_id: str
) -> tuple[bytes, dict[str, str], Envelope]:
    """The body, the headers (as text) and the envelope of a stream entry.

    The body is the ``data`` field; the other fields are the headers (CloudEvents attributes
    as ``ce_*`` fields, the rest the user's). An entry without ``data`` (``XADD s * name Bob``,
    as a service that knows nothing of interlink writes one) is a bare payload: its fields but
    the ``ce_*`` ones, as a JSON object, are the body.
    """
    payload = fields.get(_DATA)
    try:
        headers = {n.decode(): v.decode() for n, v in fields.items() if n != _DATA}
    except UnicodeDecodeError:
        raw = payload if payload is not None else b""
        problem = "field names and values other than 'data' must be UTF-8 text"
        return raw, {}, Envelope(id=fallback_id, type="", payload=raw, error=problem)
    if payload is None:
        prefix = FIELDS.prefix
        body = {n: v for n, v in headers.items() if not n.startswith(prefix)}
        headers = {n: v for n, v in headers.items() if n.startswith(prefix)}
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return payload, headers, read(FIELDS, payload, headers, fallback_id=fallback_id)


class RedisDelivery(Received):
    __slots__ = (
        "_done",
        "_fields",
        "_id",
        "_source",
        "_sub",
    )

    def __init__(
        self,
        sub: Subscription,
        source: int,
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        times: int,
    ) -> None:
        self._sub = sub
        self._source = source  # 0: the topic's stream, 1: the group's retry stream
        self._id = entry_id
        self._done = False
        self._fields = fields
        self.raw, self.headers, self.envelope = message_of(fields, entry_id.decode())
        self.attempt = attempt_of(fields, times)

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            self._sub.ack(self._source, self._id)

    async def nack(self, delay: float) -> None:
        if not self._done:
            self._done = True
            await self._sub.retry(self._source, self._id, self._fields, self.attempt, delay)

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._done:
            return
        self._done = True
        sub = self._sub
        letter = letter_of(self, sub.topic, sub.group, reason, error_type, FIELDS)
        await sub.dead(self._source, self._id, encode_dead_letter(letter))
