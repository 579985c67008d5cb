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
bindings are restored after a broker restart, and a consumer whose channel was lost (or whom
the broker cancelled) subscribes again on a new channel.

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

from interlink.messaging.backends._base import ConnectionBackend, Subscribed, client_library

with client_library("amqp", "aio-pika", "rabbitmq"):
    import aiormq
    from aio_pika.abc import AbstractChannel
    from aiormq.abc import DeliveredMessage
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
        conn, channel = await self._publishing(topic)
        try:
            await channel.basic_publish(
                message.data,
                exchange=conn.exchange.name,
                routing_key=topic,
                properties=_properties(message),
                mandatory=True,
                timeout=conn.timeout,
            )
        except PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc

    async def _publishing(self, topic: str) -> tuple[RabbitConnection, aiormq.abc.AbstractChannel]:
        """The connection, with ``topic`` declared, and its publishing channel's underlying
        aiormq channel: what ``Exchange.publish`` does per message, done here so that a
        message costs a ``Basic.Properties``, not an ``aio_pika.Message`` and its conversion
        back (a few us of attribute checks each)."""
        conn = self.connection
        try:
            await conn.ensure_topic(topic)
            if conn.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            channel = await conn.channel.get_underlay_channel()
        except PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        return conn, channel

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Publish all with their confirms in flight together, then await them."""
        conn, channel = await self._publishing(topic)
        publish, name, timeout = channel.basic_publish, conn.exchange.name, conn.timeout
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
        queue = await channel.declare_queue(
            conn.queue_name(topic, group), durable=True, arguments=conn.arguments()
        )
        buffer: deque[DeliveredMessage] = deque()
        signal = Signal()
        acks = AckBatcher()
        self._batchers.append(acks)
        cancelled: list[object] = []

        async def arrived(message: DeliveredMessage) -> None:
            acks.delivered(message)
            buffer.append(message)
            signal.wake()

        def lost(frame: object) -> None:
            cancelled.append(frame)
            signal.wake()

        # Consumed on the channel aio-pika wraps, not through Queue.consume, which would
        # build an IncomingMessage per delivery and run the callback in a task of its own
        # (a third of the client's work per message). The price: aio-pika does not restore
        # this consumer after a reconnect, so a lost channel (or a consumer the broker
        # cancelled) ends the iteration with an error and the consumer subscribes anew.
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(lost)
        underlay.closing.add_done_callback(lost)
        tag = (await underlay.basic_consume(queue.name, arrived)).consumer_tag or ""
        sub = Subscribed(conn, topic, group)
        gone = False
        try:
            while True:
                while not buffer:
                    if cancelled or underlay.is_closed:
                        gone = True
                        raise ConnectionError(
                            f"rabbitmq: the consumer of {queue.name} was closed or cancelled"
                        )
                    await signal.wait()
                message = buffer.popleft()
                if message.channel.is_closed:
                    continue  # from before a reconnect: the broker has requeued it already
                yield RabbitDelivery(sub, acks, message)
        finally:
            underlay.on_consumer_cancel_callbacks.discard(lost)
            if gone:  # its deliveries went back with the channel: nothing left to ack on it
                if channel in self._channels:  # (not if the backend is closing meanwhile)
                    self._channels.remove(channel)
                with contextlib.suppress(Exception):
                    await channel.close()
            else:
                with contextlib.suppress(Exception):
                    # deliveries sent before the cancel-ok still arrive
                    await underlay.basic_cancel(tag)
            for message in buffer:
                acks.settled(message)
                with contextlib.suppress(Exception):
                    await message.channel.basic_nack(message.delivery_tag or 0, requeue=True)
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
