"""Settling the deliveries of one Redis Streams subscription: acks batched into one ``XACK``,
retries (at once into the group's retry stream, or through the delay set and the task that
promotes them when due), dead letters; and ``RedisDelivery``, which settles through them.

A module of its own because settling shares no state with reading: ``Subscription`` (in
``_redis_streams``) reads, and inherits these methods from ``Settling``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from interlink.messaging.backends._options import reconnect_delay
from interlink.messaging.backends._redis_calls import LOST, shielded
from interlink.messaging.envelope import DeadLetter, decode_or_poison, encode_dead_letter

if TYPE_CHECKING:
    from interlink.messaging.backends.redis import RedisBackend

__all__ = ["RedisDelivery", "Settling"]

log = logging.getLogger("interlink.messaging.redis")


class RedisDelivery:
    __slots__ = ("_done", "_id", "_source", "_sub", "attempt", "envelope", "raw")

    def __init__(
        self,
        sub: Settling,
        source: int,
        entry_id: bytes,
        fields: Mapping[bytes, bytes],
        times: int,
    ) -> None:
        self._sub = sub
        self._source = source  # 0: the topic's stream, 1: the group's retry stream
        self._id = entry_id
        self._done = False
        raw = fields.get(b"d", b"")
        self.attempt = int(fields.get(b"a", 0)) + times
        self.raw = raw
        self.envelope = decode_or_poison(raw, entry_id.decode())

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            self._sub.ack(self._source, self._id)

    async def nack(self, delay: float) -> None:
        if not self._done:
            self._done = True
            await self._sub.retry(self._source, self._id, self.raw, self.attempt, delay)

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._done:
            return
        self._done = True
        env = self.envelope
        sub = self._sub
        letter = DeadLetter(
            id=env.id,
            topic=sub.topic,
            data=self.raw,
            reason=reason,
            error_type=error_type,
            attempts=self.attempt,
            group=sub.group,
            published_at=env.time if env.error is None else None,
            dead_at=time.time(),
        )
        await sub.dead(self._source, self._id, encode_dead_letter(letter))


class Settling:
    """The settling half of a ``Subscription``: its keys, batched acks and delayed retries."""

    def __init__(self, backend: RedisBackend, topic: str, group: str) -> None:
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
        self, source: int, entry_id: bytes, raw: bytes, attempt: int, delay: float
    ) -> None:
        """Back later with ``attempt + 1``: now into the retry stream, or via the delay set."""
        stream = self.streams[source]
        if delay <= 0:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.streams[1], {b"d": raw, b"a": attempt})
                pipe.xack(stream, self.group, entry_id)
                if source:
                    pipe.xdel(stream, entry_id)
                await pipe.execute()
            return
        member = b"%d|%d%s|" % (attempt, source, entry_id) + raw
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(f"{self.backend.prefix}:{self.topic}.dlq", {b"d": record})
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
