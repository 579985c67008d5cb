"""RabbitMQ backend through aio-pika: ``amqp://user:password@host:5672/vhost`` (``amqps://``).

Layout (``exchange`` defaults to ``interlink``):

- a durable topic exchange ``interlink``; a message is published with its topic as the
  routing key;
- one durable queue per (topic, group), ``<topic>:<group>``, bound with the topic: a quorum
  queue by default (replicated, fsynced before the confirm, and it counts redeliveries, so a
  message that crashes its consumer still reaches ``max_deliveries``), or classic;
- ``<topic>:#backlog``: what was published while the topic had no group yet (the exchange's
  alternate exchange routes there); the topic's first group takes it over when it starts, so a
  confirmed message is never dropped for want of a queue;
- retries: a copy goes through ``interlink.delay.<ms>`` (a fanout exchange and a queue whose
  message TTL is that delay, dead-lettering back by the copy's routing key, which is the
  group's queue); delays are rounded up to one of a fixed set of steps (at most 25% longer,
  13 steps per decade), so the number of delay queues stays small. TTL queues work on
  any RabbitMQ (no plugin); quorum delay queues dead-letter at least once;
- ``<topic>.dlq``: a classic durable queue of ``encode_dead_letter`` records, browsed by
  getting messages without acking them (they go back, in order, when the channel closes);
- ``interlink.topics``: a queue naming each topic once, for ``topics()`` (AMQP cannot list).

Publishing uses publisher confirms with persistent messages; a batch keeps every confirm in
flight and awaits them together. Consuming uses manual acks with ``prefetch`` as the channel's
QoS; acks are not confirmed by the broker (as in AMQP itself), so a crash right after an ack
may redeliver. A retry publishes the copy (confirmed) and then acks the original, so a crash
in between delivers twice, never loses. The connection is robust: channels, queues and
consumers are restored after a broker restart.

URL options: ``queue_type`` (quorum|classic), ``exchange`` (``interlink``), ``timeout`` (s,
10: a publish's confirmation), ``connect_timeout`` (s, 5), ``reconnect_interval`` (s, 1),
``claim_lease`` (s, 10: how long the idempotency claim of a consumer that died holds its
message; RabbitMQ redelivers at once, so this is the whole wait after a crash),
``dlq_max_age``, ``dlq_max_count``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import Any, ClassVar

from interlink.messaging.backends._base import ConnectionBackend, client_library

with client_library("amqp", "aio-pika", "rabbitmq"):
    import aiormq
    from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
    from pamqp.commands import Basic

from interlink.messaging.backend import ConsumerLag, Delivery, PublishError
from interlink.messaging.backends._wait import Signal
from interlink.messaging.backends.rabbitmq import _dlq
from interlink.messaging.backends.rabbitmq._connection import (
    CONTENT_TYPE,
    PERSISTENT,
    PUBLISH_ERRORS,
    RabbitConnection,
    delay_step,
    message_of,
)
from interlink.messaging.backends.rabbitmq._delivery import AckBatcher, RabbitDelivery
from interlink.messaging.envelope import AMQP, Binding, OutgoingMessage

__all__ = ["RabbitBackend", "delay_step"]

Properties = Basic.Properties
_PERSISTENT = int(PERSISTENT)


def _properties(item: OutgoingMessage) -> Basic.Properties:
    headers: dict[str, Any] = dict(item.headers)
    content_type = headers.pop(CONTENT_TYPE, None)
    return Properties(
        delivery_mode=_PERSISTENT,
        message_id=item.message_id,
        headers=headers,
        content_type=content_type,
    )


class RabbitBackend(ConnectionBackend[RabbitConnection]):
    """Messages in RabbitMQ queues (see the module docstring for the layout). The DLQ is
    browsed without acking (closing the channel puts letters back); a replay acks each
    letter off once its copy is confirmed; ``topics`` reads the topics registry (AMQP has no
    way to list queues)."""

    scheme: ClassVar[str] = "amqp"
    binding: ClassVar[Binding] = AMQP
    dlq: ClassVar[ModuleType] = _dlq

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._channels: list[AbstractChannel] = []
        self._batchers: list[AckBatcher] = []

    def _open(self, url: str) -> RabbitConnection:
        return RabbitConnection(url, close=self.aclose)

    @property
    def visibility_timeout(self) -> float:
        """Seconds an idempotency claim of a consumer that died holds its message (RabbitMQ
        itself redelivers at once when the consumer's connection drops): ``claim_lease``."""
        return self.connection.claim_lease

    async def aclose(self) -> None:
        """Close the subscription channels (unacked messages go back) and the connection."""
        for batcher in self._batchers:  # acks of handlers that finished after their stop
            await batcher.flush(force=True)
        self._batchers.clear()
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()
        await self.connection.aclose()

    async def ensure_group(self, topic: str, group: str) -> None:
        """Declare the group's queue, bind it, and take over the topic's backlog."""
        await self.connection.ensure_group(topic, group)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Publish persistent, wait for the publisher confirm."""
        conn = await self._declared(topic)
        amqp = message_of(message.data, message.headers, message.message_id)
        await conn.confirm(conn.exchange, amqp, topic, topic)

    async def _declared(self, topic: str) -> RabbitConnection:
        conn = self.connection
        try:
            await conn.ensure_topic(topic)
        except PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        return conn

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Publish all with their confirms in flight together, then await them."""
        conn = await self._declared(topic)
        exchange = conn.exchange
        # What Exchange.publish does per message, done once for the batch; each message then
        # costs a Basic.Properties, not an aio_pika.Message (a few us of attribute checks).
        try:
            if conn.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            channel = await conn.channel.get_underlay_channel()
        except PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        publish, name, timeout = channel.basic_publish, exchange.name, conn.timeout
        results = await asyncio.gather(
            *(
                publish(
                    item.data,
                    exchange=name,
                    routing_key=topic,
                    properties=_properties(item),
                    mandatory=True,
                    timeout=timeout,
                )
                for item in items
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise PublishError(
                topic, f"{len(failed)} of {len(items)} not confirmed: {failed[0]!r}"
            ) from failed[0]

    # -- consuming ----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Consume the group's queue with ``prefetch`` unacked deliveries at most."""
        return self._consume(topic, group, max(1, prefetch))

    async def _consume(self, topic: str, group: str, prefetch: int) -> AsyncIterator[Delivery]:
        conn = self.connection
        await conn.ensure_group(topic, group)
        channel = await conn.connection.channel()
        self._channels.append(channel)  # open until aclose: running handlers ack through it
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (not just looked up) on this channel, so that the robust connection
        # restores the consumer after a reconnect.
        queue = await channel.declare_queue(
            conn.queue_name(topic, group), durable=True, arguments=conn.arguments()
        )
        buffer: deque[AbstractIncomingMessage] = deque()
        signal = Signal()
        acks = AckBatcher()
        self._batchers.append(acks)

        async def arrived(message: AbstractIncomingMessage) -> None:
            acks.delivered(message)
            buffer.append(message)
            signal.wake()

        tag = await queue.consume(arrived)
        try:
            while True:
                while not buffer:
                    await signal.wait()
                message = buffer.popleft()
                if message.channel.is_closed:
                    continue  # from before a reconnect: the broker has requeued it already
                yield RabbitDelivery(conn, acks, topic, group, message)
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)  # deliveries sent before the cancel-ok still arrive
            for message in buffer:
                acks.settled(message)
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
            await acks.flush(force=False)

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """The group queue's ``message_count`` from a passive declare: the messages ready for
        delivery (AMQP does not report those delivered and not yet acknowledged, nor the
        messages' age)."""
        backend = self.connection
        await backend.connect()
        name = backend.queue_name(topic, group)
        if not await backend.queue_exists(name):
            return ConsumerLag(topic=topic, group=group, pending=0)
        channel = await backend.connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
            ready = int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()
        return ConsumerLag(topic=topic, group=group, pending=ready)
