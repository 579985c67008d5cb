"""Consuming a topic in a consumer group: deliveries handed out in partition order, offsets
committed only up to the first one not yet settled, retries as delayed copies.

Kafka remembers one position per partition and group, not one state per message. With several
handlers at once (``concurrency``), a later offset may finish before an earlier one; the
position committed is therefore the end of the *contiguous* run of settled offsets, so a crash
redelivers what was unfinished (and possibly some that finished after it): at-least-once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import operator
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from interlink.messaging.backends._base import Received, letter_of
from interlink.messaging.backends.kafka._connection import (
    KAFKA,
    NOT_BEFORE,
    RETRY_FOR,
    KafkaConnection,
    text_headers,
)
from interlink.messaging.envelope import (
    encode_dead_letter,
    read,
    with_attempt,
    with_id,
)

__all__ = ["Consume", "KafkaDelivery", "PartitionOffsets"]

log = logging.getLogger("interlink.messaging.kafka")

_DROP = frozenset({NOT_BEFORE, RETRY_FOR})
_ID = KAFKA.id
_OFFSET = operator.attrgetter("offset")
# How long a closed subscription waits for its handed-out deliveries to be settled before it
# leaves the group anyway (their messages then come back to the group's next consumer).
_SETTLE_WAIT = 60.0
# Acks are committed at most this often (one request for a burst's acks): a crash may
# redeliver what was acked in the last interval, as with any lost ack.
_COMMIT_EVERY = 0.05


class PartitionOffsets:
    """The offsets of one partition handed out and not yet committed, and which of them are
    settled; ``committable`` is the offset to commit (one past the contiguous settled run)."""

    __slots__ = ("committable", "dirty", "open", "revoked", "settled")

    def __init__(self) -> None:
        self.open: deque[int] = deque()  # increasing: records arrive in offset order
        self.settled: set[int] = set()
        self.committable: int | None = None
        self.dirty = False
        self.revoked = False  # the partition went to another consumer: settling changes nothing

    def track(self, offset: int) -> None:
        """A record of this partition was fetched."""
        self.open.append(offset)

    def settle(self, offset: int) -> bool:
        """The record at ``offset`` is done (acked, retried as a copy, dead-lettered); True
        when that gave the partition an offset to commit where it had none waiting."""
        open_, settled = self.open, self.settled
        if not open_ or open_[0] != offset:  # an earlier offset is still being handled
            settled.add(offset)
            return False
        last = open_.popleft()  # settled in order: the usual case, no set involved
        while settled and open_ and open_[0] in settled:
            last = open_.popleft()
            settled.discard(last)
        self.committable = last + 1
        if self.dirty:
            return False
        self.dirty = True
        return True


class _Subscription:
    """The state one ``subscribe`` iterator shares with its deliveries."""

    def __init__(self, connection: KafkaConnection, topic: str, group: str) -> None:
        self.connection = connection
        self.topic = topic
        self.group = group
        self.partitions: dict[TopicPartition, PartitionOffsets] = {}
        self.consumer: Any = None
        self.wake = asyncio.Event()
        self.outstanding = 0  # deliveries handed out and not settled yet
        self.all_settled: asyncio.Event | None = None  # made when closing, set at outstanding 0

    def settle(self, offsets: PartitionOffsets, offset: int) -> None:
        """A record the consumer never got (a retry copy for another group) is done."""
        if not offsets.revoked and offsets.settle(offset):
            self.wake.set()

    def settled(self, offsets: PartitionOffsets, offset: int) -> None:
        """A delivery handed out was settled."""
        # a delivery of a partition this consumer no longer owns changes nothing
        if not offsets.revoked and offsets.settle(offset):
            self.wake.set()
        self.outstanding -= 1
        if self.outstanding <= 0 and self.all_settled is not None:
            self.all_settled.set()

    async def close(self, committer: asyncio.Task[None]) -> None:
        """After the iterator closed: wait (bounded) for the deliveries still being handled,
        whose settling may publish retry copies, then commit and leave the group."""
        if self.outstanding > 0:
            self.all_settled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_settled.wait(), _SETTLE_WAIT)
        committer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await committer
        with contextlib.suppress(Exception):
            await self.commit()
        try:
            await self.consumer.stop()
        except Exception as exc:  # the broker went away: nothing left to leave
            log.warning("kafka: leaving %s/%s failed: %r", self.topic, self.group, exc)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit every partition's contiguous settled offset that changed."""
        consumer = self.consumer
        positions = {}
        for tp, offsets in self.partitions.items():
            if (only is None or tp in only) and offsets.dirty and offsets.committable is not None:
                offsets.dirty = False
                positions[tp] = offsets.committable
        if positions and consumer is not None:
            try:
                await consumer.commit(positions)
            except (KafkaError, OSError) as exc:  # a rebalance: the new owner starts earlier
                log.warning("kafka: commit on %s/%s failed: %r", self.topic, self.group, exc)

    async def committer(self) -> None:
        """Commit within ``_COMMIT_EVERY`` of an ack, one request for all acks in between."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(_COMMIT_EVERY)
            await self.commit()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, subscription: _Subscription, delayed: list[Any]) -> None:
        self.subscription = subscription
        self.delayed = delayed

    async def on_partitions_revoked(self, revoked: Any) -> None:
        lost = set(revoked)
        await self.subscription.commit(lost)
        for tp in lost:
            offsets = self.subscription.partitions.pop(tp, None)
            if offsets is not None:
                offsets.revoked = True
        # retry copies held for a partition now someone else's come back to its new owner
        self.delayed[:] = [item for item in self.delayed if not item[2]._offsets.revoked]
        heapq.heapify(self.delayed)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self.subscription.partitions.setdefault(tp, PartitionOffsets())


class KafkaDelivery(Received):
    """One record handed to the consumer; settling it marks its offset as committable."""

    __slots__ = ("_done", "_offsets", "_sub", "record")

    def __init__(
        self,
        subscription: _Subscription,
        offsets: PartitionOffsets,
        record: ConsumerRecord[Any, Any],
        headers: Mapping[str, str],
    ) -> None:
        self._sub = subscription
        self._offsets = offsets
        self._done = False
        self.record = record
        self.raw = record.value or b""
        self.headers = headers
        # the broker's coordinates name a message that names no id of its own
        fallback = "" if _ID in headers else f"{record.topic}:{record.partition}:{record.offset}"
        self.envelope = read(KAFKA, self.raw, headers, fallback_id=fallback)
        self.attempt = self.envelope.attempt

    async def ack(self) -> None:
        self._settle()

    def _settle(self) -> None:
        if not self._done:
            self._done = True
            self._sub.settled(self._offsets, self.record.offset)

    async def nack(self, delay: float) -> None:
        """Publish a copy for this group only (attempt + 1, not before now + ``delay``) to the
        end of the same partition (same key), then settle this record."""
        if self._done:
            return
        headers = with_attempt(
            KAFKA, with_id(KAFKA, self.headers, self.envelope.id), self.attempt + 1
        )
        headers[NOT_BEFORE] = repr(time.time() + max(0.0, delay))
        headers[RETRY_FOR] = self._sub.group
        record = self.record
        key = record.key
        await self._sub.connection.publish_one(
            record.topic, self.raw, key.decode("utf-8", "replace") if key else None, headers
        )
        self._settle()

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._done:
            return
        letter = letter_of(self, self._sub.topic, self._sub.group, reason, error_type, KAFKA, _DROP)
        await self._sub.connection.publish_one(
            f"{self._sub.topic}.dlq", encode_dead_letter(letter), letter.id, {}
        )
        self._settle()


def _not_before(headers: Mapping[str, str]) -> float:
    text = headers.get(NOT_BEFORE)
    if text is None:
        return 0.0
    try:
        return float(text)
    except ValueError:
        return 0.0


class Consume:
    """The deliveries of ``topic`` for ``group`` (see the module docstring): an async
    iterator that fetches a batch (up to ``prefetch`` records) when it has none left, and
    whose ``ready()`` hands out the fetched records without waiting, so the consumer takes a
    batch one record after another without a suspension each."""

    def __init__(self, connection: KafkaConnection, topic: str, group: str, prefetch: int):
        self._connection = connection
        self._topic = topic
        self._group = group
        self._prefetch = prefetch
        self._sub: _Subscription | None = None
        self._consumer: Any = None
        self._committer: asyncio.Task[None] | None = None
        self._delayed: list[tuple[float, int, KafkaDelivery]] = []
        self._order = itertools.count()
        # the fetched batch: one (partition, records) per partition, and the one being read
        self._batches: list[tuple[PartitionOffsets, list[ConsumerRecord[Any, Any]]]] = []
        self._offsets = PartitionOffsets()
        self._records: Iterator[ConsumerRecord[Any, Any]] = iter(())
        self._closed = False

    def __aiter__(self) -> Consume:
        return self

    def ready(self) -> KafkaDelivery | None:
        """The next delivery of the fetched batch, or None when it is used up."""
        sub, group = self._sub, self._group
        if sub is None:  # not started: nothing fetched yet
            return None
        offsets = self._offsets
        while True:
            record = next(self._records, None)
            if record is None or offsets.revoked:  # a revoked partition's rest is not ours
                if not self._batches:
                    return None
                offsets, records = self._batches.pop()
                self._offsets, self._records = offsets, iter(records)
                continue
            headers = text_headers(record.headers)
            if RETRY_FOR in headers:  # a retry copy: for one group, maybe not yet
                if headers[RETRY_FOR] != group:
                    sub.settle(offsets, record.offset)
                    continue
                due = _not_before(headers)
                if due > time.time():
                    delivery = KafkaDelivery(sub, offsets, record, headers)
                    heapq.heappush(self._delayed, (due, next(self._order), delivery))
                    continue
            # counted before it is handed out: it may be settled before the next call
            sub.outstanding += 1
            return KafkaDelivery(sub, offsets, record, headers)

    async def __anext__(self) -> KafkaDelivery:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._next()
        except BaseException:  # a failed fetch, or the consumer stopping it: leave the group
            self._close()
            raise

    async def _next(self) -> KafkaDelivery:
        sub = self._sub or await self._start()
        consumer, delayed = self._consumer, self._delayed
        while True:
            delivery = self.ready()
            if delivery is not None:
                return delivery
            now = time.time()
            while delayed and delayed[0][0] <= now:
                due = heapq.heappop(delayed)[2]
                if not due._offsets.revoked:
                    sub.outstanding += 1
                    return due
            wait = min(1.0, delayed[0][0] - now) if delayed else 1.0
            try:
                batch = await consumer.getmany(timeout_ms=max(1, int(wait * 1000)))
            except KafkaError as exc:
                log.warning("kafka: fetch on %s/%s failed: %r", self._topic, self._group, exc)
                await asyncio.sleep(0.5)
                continue
            partitions = sub.partitions
            for tp, records in batch.items():
                offsets = partitions.get(tp)
                if offsets is None:
                    offsets = partitions[tp] = PartitionOffsets()
                offsets.open.extend(map(_OFFSET, records))  # records come in offset order
                self._batches.append((offsets, records))

    async def _start(self) -> _Subscription:
        connection, topic = self._connection, self._topic
        await connection.ensure_topic(topic)
        sub = _Subscription(connection, topic, self._group)
        consumer = connection.consumer(group=self._group, max_poll_records=self._prefetch)
        consumer.subscribe([topic], listener=_Rebalance(sub, self._delayed))
        sub.consumer = self._consumer = consumer
        self._committer = asyncio.create_task(
            sub.committer(), name=f"interlink: kafka commits {topic}"
        )
        self._sub = sub
        await consumer.start()
        return sub

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._batches.clear()  # never handed out: not committed, the group's next owner gets them
        self._records = iter(())
        if self._sub is not None and self._committer is not None:
            # the consumer closes the iterator before its running handlers finish: the group
            # is left once they settled (``KafkaConnection.aclose`` waits for it)
            self._connection.closing(self._sub.close(self._committer))

    async def aclose(self) -> None:
        """Stop fetching; leave the group once the deliveries handed out are settled."""
        self._close()
