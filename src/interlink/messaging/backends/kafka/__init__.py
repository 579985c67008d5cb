"""Kafka backend: ``kafka://host:9092`` (bootstrap servers comma-separated), on aiokafka.

Layout on the cluster:

- the interlink topic is the Kafka topic (created with ``partitions`` partitions when first
  used; an existing topic is used as it is); the message key is the record key, so the
  messages of one key share a partition and are handled in order;
- a group is a Kafka consumer group; offsets are committed by hand, only once a message was
  settled (acked, retried, dead-lettered), and only up to the first offset of its partition
  not settled yet, so ``concurrency > 1`` never commits past unfinished work (at-least-once:
  a crash redelivers from the committed offset);
- metadata travels in record headers as the CloudEvents Kafka binding names them
  (``ce_id``, ``ce_type``, ..., ``content-type``), the body is the payload;
- a retry (``nack(delay)``) appends a copy to the same topic and key with ``ce_attempt`` + 1,
  ``ce_notbefore`` (when it may be handled) and ``ce_retryfor`` (the one group it is for; other
  groups skip it), then settles the original: the partition is never blocked by a wait;
- ``<topic>.dlq`` is a one-partition topic of ``encode_dead_letter`` records; Kafka cannot
  delete a record, so replay and purge append removal markers (see ``_dlq``).

``ensure_group`` creates the topic and, for a group that has no committed offsets yet, commits
the partitions' current ends: the group gets every message published from then on, before
any of its consumers has joined. (A group that already has live members, consuming other
topics, takes no commit from outside: it then starts this topic at its earliest offset.)
``Delivery.attempt`` counts retries (the copy's
``ce_attempt``); a redelivery after a consumer crash starts again at the committed offset with
the attempt the record carries.

URL options: ``partitions`` (4: of topics interlink creates), ``replication`` (1), ``timeout``
(s, 10: a publish's acknowledgement), ``connect_timeout`` (s, 5), ``session_timeout`` (s, 10:
how soon a dead consumer's partitions move to another), ``heartbeat`` (s, 1), ``dlq_max_age``
(s, 14 days), ``dlq_max_count`` (100,000).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import ClassVar

from interlink.messaging.backends._base import ConnectionBackend, client_library

with client_library("kafka", "aiokafka", "kafka"):
    import aiokafka  # noqa: F401 - the client library, checked here for the install hint

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from interlink.messaging.backend import ConsumerLag, Delivery
from interlink.messaging.backends.kafka import _dlq
from interlink.messaging.backends.kafka._connection import KAFKA, KafkaConnection
from interlink.messaging.backends.kafka._subscription import Consume
from interlink.messaging.envelope import Binding, OutgoingMessage

__all__ = ["KAFKA", "KafkaBackend"]

log = logging.getLogger("interlink.messaging.kafka")


class KafkaBackend(ConnectionBackend[KafkaConnection]):
    """Messages in Kafka topics (see the module docstring for the layout). A DLQ replay or
    purge appends a removal marker (Kafka cannot delete a record)."""

    scheme: ClassVar[str] = "kafka"
    binding: ClassVar[Binding] = KAFKA
    dlq: ClassVar[ModuleType] = _dlq

    def _open(self, url: str) -> KafkaConnection:
        return KafkaConnection(url)

    @property
    def visibility_timeout(self) -> float:
        """Seconds a dead consumer's partitions stay with it: the group's session timeout."""
        return self.connection.session_timeout

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the topic; a group without committed offsets gets the partitions' ends
        committed, so it receives every message published after this returns."""
        connection = self.connection
        await connection.ensure_topic(topic)
        consumer = connection.consumer(group=group)
        try:
            await consumer.start()
            await consumer.topics()  # a metadata request: the new topic's partitions
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return
            consumer.assign(tps)
            for tp in tps:
                if await consumer.committed(tp) is not None:
                    return
            ends = await consumer.end_offsets(tps)
            try:
                await consumer.commit({tp: ends[tp] for tp in tps})
            except KafkaError as exc:
                # The group has live members (it consumes other topics too): Kafka takes no
                # commit from outside it. Its consumer of this topic then starts at the
                # earliest offset, which for a topic created here is all of it.
                log.info("kafka: group %s starts %s at its beginning (%r)", group, topic, exc)
        finally:
            await consumer.stop()

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """The records past ``group``'s committed offset on each partition of ``topic`` (its
        end offset minus the commit). A group with no commit on the topic has nothing pending.
        Kafka keeps no per-record state, so retry copies meant for other groups count too,
        and the oldest's age would need a record read: it stays None."""
        # The group's consumer without joining the group (nothing assigned through it): what
        # ``ensure_group`` also reads commits with.
        reader = self.connection.consumer(group=group)
        try:
            await reader.start()
            await reader.topics()
            tps = [
                TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
            reader.assign(tps)
            committed = {tp: await reader.committed(tp) for tp in tps}
            known = {tp: offset for tp, offset in committed.items() if offset is not None}
            ends = await reader.end_offsets(list(known)) if known else {}
        finally:
            await reader.stop()
        pending = sum(max(0, ends[tp] - offset) for tp, offset in known.items())
        return ConsumerLag(topic=topic, group=group, pending=pending)

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Send the record and wait for the acknowledgement of every in-sync replica."""
        await self.connection.publish_one(topic, message.data, message.key, message.headers)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Hand every record to the producer, then wait for all acknowledgements."""
        await self.connection.publish_batch(topic, items)

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Consume as a member of the consumer group ``group``, up to ``prefetch`` records
        per fetch."""
        return Consume(self.connection, topic, group, max(1, prefetch))
