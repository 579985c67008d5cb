"""What the RabbitMQ backend declares on the server (the layout is in ``rabbitmq``'s docstring):
a topic's backlog queue, a DLQ, a delay step's exchange and queue, entries of the topics
registry, and a topic's backlog taken over by its groups.

A module of its own because each of these runs once per name and none on the path of a
message: ``RabbitBackend`` remembers what it declared and calls these only for what is new.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange

from interlink.messaging.backends._rabbit_delivery import PERSISTENT

if TYPE_CHECKING:
    from interlink.messaging.backends.rabbitmq import RabbitBackend

__all__ = ["adopt_backlog", "declare_backlog", "declare_delay", "declare_dlq", "queue_exists"]


async def queue_exists(backend: RabbitBackend, queue: str) -> bool:
    """Whether ``queue`` exists (a failed passive declare closes its channel: a spare one)."""
    assert backend._conn is not None
    channel = await backend._conn.channel()
    try:
        await channel.declare_queue(queue, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def _register(backend: RabbitBackend, name: str) -> None:
    """Write ``name`` into the topics registry (first use of a topic or DLQ)."""
    registry = f"{backend.exchange_name}.topics"
    await backend.channel.declare_queue(registry, durable=True)
    await backend.default_exchange.publish(
        aio_pika.Message(name.encode(), delivery_mode=PERSISTENT), registry
    )


async def declare_backlog(backend: RabbitBackend, topic: str) -> None:
    """Declare ``<topic>:#backlog``, bound to the unrouted exchange, and register the topic
    (unless the backlog exists already)."""
    backlog = f"{topic}:#backlog"
    if not await queue_exists(backend, backlog):
        queue = await backend.channel.declare_queue(
            backlog, durable=True, arguments=backend._arguments()
        )
        await queue.bind(f"{backend.exchange_name}.unrouted", routing_key=topic)
        await _register(backend, topic)


async def declare_dlq(backend: RabbitBackend, name: str) -> None:
    """Declare the DLQ ``name`` and register it (unless it exists already)."""
    if not await queue_exists(backend, name):
        await backend.channel.declare_queue(name, durable=True)
        await _register(backend, name)


async def declare_delay(backend: RabbitBackend, ms: int) -> AbstractExchange:
    """Declare the delay step ``ms``: a fanout exchange and a queue whose message TTL is
    ``ms``, dead-lettering back by routing key; the exchange."""
    channel = backend.channel
    name = f"{backend.exchange_name}.delay.{ms}"
    arguments: dict[str, Any] = {"x-message-ttl": ms, "x-dead-letter-exchange": ""}
    if backend.queue_type == "quorum":
        arguments.update(
            {
                "x-queue-type": "quorum",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
        )
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue(name, durable=True, arguments=arguments)
    await queue.bind(exchange)
    return exchange


async def adopt_backlog(backend: RabbitBackend, topic: str) -> None:
    """Move what waited in ``<topic>:#backlog`` to the topic's groups (get, publish
    confirmed, ack: a crash in between repeats a message, never drops one)."""
    channel = backend.channel
    backlog = await channel.get_queue(f"{topic}:#backlog", ensure=False)
    exchange = backend._exchange
    assert exchange is not None
    while True:
        message = await backlog.get(no_ack=False, fail=False)
        if message is None:
            return
        copy = aio_pika.Message(
            message.body, delivery_mode=PERSISTENT, message_id=message.message_id
        )
        await backend.confirm(exchange, copy, topic, topic)
        await message.ack()
