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
10: a publish's confirmation), ``connect_timeout`` (s, 5), ``reconnect_interval`` (s, 1).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

try:
    import aio_pika
    import aiormq
    from aio_pika.abc import (
        AbstractChannel,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractRobustConnection,
    )
    from pamqp.commands import Basic
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError(
        "interlink.messaging's amqp:// backend needs aio-pika: pip install 'interlink[rabbitmq]'"
    ) from exc

from interlink.messaging.backend import BackendUnavailable, Delivery, PublishError, redact
from interlink.messaging.backends import _rabbit_dlq
from interlink.messaging.backends._options import UrlOptions, close_at_loop_end, stop_keeper
from interlink.messaging.backends._rabbit_delivery import (
    PERSISTENT,
    AckBatcher,
    RabbitDelivery,
    Signal,
    delay_step,
)
from interlink.messaging.backends._rabbit_topology import (
    adopt_backlog,
    declare_backlog,
    declare_delay,
    declare_dlq,
)
from interlink.messaging.envelope import DeadLetter, OutgoingMessage

__all__ = ["RabbitBackend", "delay_step"]

Properties = Basic.Properties
_PERSISTENT = int(PERSISTENT)

# What a publish raises while the broker is away or refuses (a channel being restored after a
# reconnect raises ChannelInvalidStateError, a RuntimeError): all become a PublishError.
_PUBLISH_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


class RabbitBackend:
    """Messages in RabbitMQ queues (see the module docstring for the layout)."""

    scheme: ClassVar[str] = "amqp"

    def __init__(self, url: str) -> None:
        opts = UrlOptions(url, "amqp")
        self._url = url
        self.queue_type = opts.choice("queue_type", "quorum", ("quorum", "classic"))
        self.exchange_name = opts.text("exchange", "interlink")
        self.timeout = opts.number("timeout", 10.0, minimum=0.001)
        self.connect_timeout = opts.number("connect_timeout", 5.0, minimum=0.001)
        self.reconnect_interval = opts.number("reconnect_interval", 1.0, minimum=0.01)
        opts.done()
        self._base = opts.base
        self._conn: AbstractRobustConnection | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()
        self._topics: set[str] = set()
        self._dlqs: set[str] = set()
        self._delays: dict[int, AbstractExchange] = {}
        self._channels: list[AbstractChannel] = []
        self._batchers: list[AckBatcher] = []

    # -- connection and topology (declared in _rabbit_topology) -------------------------

    def _open(self) -> bool:
        return self._conn is not None

    async def connect(self) -> None:
        """Open a robust connection, a confirming channel, and declare the exchanges."""
        if self._open():
            return
        async with self._lock:
            if self._open():  # connected while this call waited for the lock
                return
            try:
                conn = await aio_pika.connect_robust(
                    self._base,
                    timeout=self.connect_timeout,
                    reconnect_interval=self.reconnect_interval,
                    client_properties={"connection_name": "interlink"},
                )
            except (*_PUBLISH_ERRORS, aio_pika.exceptions.AMQPException) as exc:
                raise BackendUnavailable(redact(self._url), f"cannot connect: {exc!r}") from exc
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            unrouted = await channel.declare_exchange(
                f"{self.exchange_name}.unrouted", aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._exchange = await channel.declare_exchange(
                self.exchange_name,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                arguments={"alternate-exchange": unrouted.name},
            )
            self._channel = channel
            self._conn = conn
            self._keeper = close_at_loop_end(self.aclose)

    async def aclose(self) -> None:
        """Close the subscription channels (unacked messages go back) and the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        keeper, self._keeper = self._keeper, None
        stop_keeper(keeper)
        for batcher in self._batchers:  # acks of handlers that finished after their stop
            await batcher.flush(force=True)
        self._batchers.clear()
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close()
        self._channels.clear()
        self._topics.clear()
        self._dlqs.clear()
        self._delays.clear()
        self._channel = self._exchange = None
        with contextlib.suppress(Exception):
            await conn.close()

    @property
    def channel(self) -> AbstractChannel:
        """The confirming channel publishes go through."""
        if self._channel is None:
            raise BackendUnavailable(redact(self._url), "not connected")
        return self._channel

    @property
    def default_exchange(self) -> AbstractExchange:
        """The AMQP default exchange (routing key = queue name)."""
        return self.channel.default_exchange

    def queue_name(self, topic: str, group: str) -> str:
        """The group's queue (``:`` is in no topic or group name, so names cannot collide)."""
        return f"{topic}:{group}"

    def _arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        await self.connect()
        await declare_backlog(self, topic)
        self._topics.add(topic)

    async def ensure_dlq(self, topic: str) -> str:
        """Declare ``<topic>.dlq`` (classic: it is browsed by get-and-requeue); its name."""
        name = f"{topic}.dlq"
        if topic not in self._dlqs:
            await declare_dlq(self, name)
            self._dlqs.add(topic)
        return name

    async def delay_exchange(self, delay: float) -> AbstractExchange:
        """The fanout exchange in front of the delay queue for ``delay``."""
        ms = delay_step(delay)
        exchange = self._delays.get(ms)
        if exchange is None:
            exchange = await declare_delay(self, ms)
            self._delays[ms] = exchange
        return exchange

    async def ensure_group(self, topic: str, group: str) -> None:
        """Declare the group's queue, bind it, and take over the topic's backlog."""
        await self._ensure_topic(topic)
        name = self.queue_name(topic, group)
        channel = self.channel
        queue = await channel.declare_queue(name, durable=True, arguments=self._arguments())
        await queue.bind(self.exchange_name, routing_key=topic)
        await adopt_backlog(self, topic)

    # -- publishing ---------------------------------------------------------------------

    async def confirm(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, topic: str
    ) -> None:
        """Publish and wait for the broker's confirm; any failure is a ``PublishError``."""
        try:
            await exchange.publish(message, routing_key, timeout=self.timeout)
        except _PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str],
        message_id: str,
    ) -> None:
        """Publish persistent, wait for the publisher confirm."""
        try:
            await self._ensure_topic(topic)
        except _PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        exchange = self._exchange
        assert exchange is not None
        message = aio_pika.Message(data, delivery_mode=PERSISTENT, message_id=message_id)
        await self.confirm(exchange, message, topic, topic)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Publish all with their confirms in flight together, then await them."""
        try:
            await self._ensure_topic(topic)
        except _PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        exchange = self._exchange
        assert exchange is not None
        # What Exchange.publish does per message, done once for the batch; each message then
        # costs a Basic.Properties, not an aio_pika.Message (a few us of attribute checks).
        try:
            if self.channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("channel closed")
            channel = await self.channel.get_underlay_channel()
        except _PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        publish, name, timeout = channel.basic_publish, exchange.name, self.timeout
        results = await asyncio.gather(
            *(
                publish(
                    item.data,
                    exchange=name,
                    routing_key=topic,
                    properties=Properties(delivery_mode=_PERSISTENT, message_id=item.message_id),
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
        await self.ensure_group(topic, group)
        assert self._conn is not None
        channel = await self._conn.channel()
        self._channels.append(channel)  # open until aclose: running handlers ack through it
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (not just looked up) on this channel, so that the robust connection
        # restores the consumer after a reconnect.
        queue = await channel.declare_queue(
            self.queue_name(topic, group), durable=True, arguments=self._arguments()
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
                yield RabbitDelivery(self, acks, topic, group, message)
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)  # deliveries sent before the cancel-ok still arrive
            for message in buffer:
                acks.settled(message)
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
            await acks.flush(force=False)

    # -- the DLQ and topics (in _rabbit_dlq) --------------------------------------------

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """Get up to ``limit`` records without acking; closing the channel puts them back."""
        return await _rabbit_dlq.dlq_list(self, topic, limit)

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish each chosen letter (confirmed), then ack it off the DLQ; the others go
        back when the browsing channel closes."""
        return await _rabbit_dlq.dlq_replay(self, topic, ids)

    async def dlq_purge(self, topic: str) -> int:
        """Purge ``<topic>.dlq``."""
        return await _rabbit_dlq.dlq_purge(self, topic)

    async def topics(self) -> list[str]:
        """The names in the topics registry (AMQP has no way to list queues)."""
        return await _rabbit_dlq.topics(self)
