"""Consuming from RabbitMQ: deliveries and their coalesced acks.

A delivery wraps aiormq's ``DeliveredMessage`` as the channel hands it over: aio-pika's
``IncomingMessage`` would copy each of its properties through checked attribute setters, tens
of us per message, for fields a delivery reads two of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import aio_pika
from aiormq.abc import DeliveredMessage

from interlink.messaging.backends._base import Received, Subscribed, letter_of
from interlink.messaging.backends.rabbitmq._connection import (
    PERSISTENT,
    RabbitConnection,
    headers_of,
    message_of,
)
from interlink.messaging.envelope import (
    AMQP,
    encode_dead_letter,
    read,
    with_attempt,
)

__all__ = ["AckBatcher", "RabbitDelivery"]

log = logging.getLogger("interlink.messaging.rabbitmq")

# An ack waiting behind an unfinished earlier delivery is sent on its own after this long.
_STRAGGLER = 0.05
_GATHER = 0.005  # seconds acks are gathered before they are sent


class _Lane:
    """One AMQP channel's deliveries in tag order, and which of them are settled."""

    __slots__ = ("acked", "order", "settled", "since")

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.acked: set[int] = set()  # to ack, waiting for the tags before them
        self.settled: set[int] = set()  # nacked or acked on their own: skip over them
        self.since = 0.0


class AckBatcher:
    """Turns the acks of one subscription into a ``basic.ack(multiple=True)`` every 5 ms.

    Delivery tags grow in delivery order on a channel; once every delivery up to tag T is
    settled, a single multiple-ack for T acknowledges them all. An ack stuck behind a slow
    earlier delivery is sent on its own after a few ms, so nothing waits on a slow handler.
    """

    def __init__(self) -> None:
        self._lanes: dict[Any, _Lane] = {}
        self._flusher: asyncio.Task[None] | None = None

    def delivered(self, message: DeliveredMessage) -> None:
        lane = self._lanes.get(message.channel)
        if lane is None:
            lane = self._lanes[message.channel] = _Lane()
        lane.order.append(message.delivery_tag or 0)

    def settled(self, message: DeliveredMessage) -> None:
        """Nacked (or rejected) on its own: the batch skips it."""
        lane = self._lanes.get(message.channel)
        if lane is not None:
            lane.settled.add(message.delivery_tag or 0)

    def ack(self, message: DeliveredMessage) -> None:
        lane = self._lanes.get(message.channel)
        if lane is None:
            return
        if not lane.acked:
            lane.since = time.monotonic()
        lane.acked.add(message.delivery_tag or 0)
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_soon())

    async def _flush_soon(self) -> None:
        # The acks of a few milliseconds, together: a consumer that keeps up gets its
        # deliveries one loop turn at a time, and a basic.ack per turn (a Raft entry on a
        # quorum queue) costs as much as the handling. Acks are not confirmed anyway.
        await asyncio.sleep(_GATHER)
        try:
            await self.flush(force=False)
        finally:
            self._flusher = None
            if any(lane.acked for lane in self._lanes.values()):
                self._flusher = asyncio.ensure_future(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(_STRAGGLER)
        self._flusher = None
        await self.flush(force=False)
        if any(lane.acked for lane in self._lanes.values()) and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._later())

    async def flush(self, *, force: bool) -> None:
        """Send what can be sent; with ``force`` (or for stragglers) every ack on its own."""
        now = time.monotonic()
        for channel, lane in list(self._lanes.items()):
            if channel.is_closed:  # from before a reconnect: the broker requeued them all
                del self._lanes[channel]
                continue
            highest = 0
            order, acked, settled = lane.order, lane.acked, lane.settled
            while order and (order[0] in acked or order[0] in settled):
                tag = order.popleft()
                if tag in acked:
                    acked.discard(tag)
                    highest = tag
                else:
                    settled.discard(tag)
            with contextlib.suppress(Exception):  # unacked, they are redelivered: at least once
                if highest:
                    await channel.basic_ack(highest, multiple=True, wait=False)
                if acked and (force or now - lane.since >= _STRAGGLER):
                    for tag in sorted(acked):
                        await channel.basic_ack(tag, wait=False)
                    settled.update(acked)
                    acked.clear()
            if not order:
                del self._lanes[channel]


class RabbitDelivery(Received):
    __slots__ = ("_acks", "_done", "_message", "_sub")

    def __init__(
        self, sub: Subscribed[RabbitConnection], acks: AckBatcher, message: DeliveredMessage
    ) -> None:
        self._sub = sub
        self._acks = acks
        self._message = message
        self._done = False
        properties = message.header.properties
        headers = self.headers = headers_of(properties)
        native = properties.headers
        returned = native.get("x-delivery-count") if native else None
        if not isinstance(returned, int):  # a classic queue only says "redelivered"
            returned = 1 if message.redelivered else 0
        self.raw = message.body
        self.envelope = read(
            AMQP,
            message.body,
            headers,
            fallback_id=properties.message_id or f"amqp:{message.delivery_tag}",
        )
        # a re-published retry copy starts at the attempt it names
        self.attempt = self.envelope.attempt + returned

    async def ack(self) -> None:
        if not self._done:
            self._done = True
            self._acks.ack(self._message)

    async def nack(self, delay: float) -> None:
        if self._done:
            return
        self._done = True
        message = self._message
        if delay <= 0:
            self._acks.settled(message)
            # the queue counts the redelivery
            await message.channel.basic_nack(message.delivery_tag or 0, requeue=True)
            return
        sub = self._sub
        backend = sub.backend
        exchange = await backend.delay_exchange(delay)
        copy = message_of(
            self.raw,
            with_attempt(AMQP, self.headers, self.attempt + 1),
            message.header.properties.message_id or self.envelope.id,
        )
        queue = backend.queue_name(sub.topic, sub.group)
        await backend.confirm(exchange, copy, queue, sub.topic)
        self._acks.ack(message)

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._done:
            return
        self._done = True
        sub = self._sub
        letter = letter_of(self, sub.topic, sub.group, reason, error_type, AMQP)
        backend = sub.backend
        dlq = await backend.ensure_dlq(sub.topic)
        record = aio_pika.Message(
            encode_dead_letter(letter), delivery_mode=PERSISTENT, message_id=letter.id
        )
        await backend.confirm(backend.default_exchange, record, dlq, sub.topic)
        self._acks.ack(self._message)
