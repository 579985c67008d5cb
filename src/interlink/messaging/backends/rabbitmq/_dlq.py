"""Dead letters in RabbitMQ (list, replay, purge) and the topic list, both read by getting
messages from a queue without acking them (they go back when the channel closes)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from interlink.messaging.backends._base import replays, stored_letter
from interlink.messaging.backends.rabbitmq._connection import RabbitConnection, message_of
from interlink.messaging.envelope import AMQP, DeadLetter

__all__ = ["dlq_list", "dlq_purge", "dlq_replay", "topics"]

log = logging.getLogger("interlink.messaging.rabbitmq")


async def _browse(backend: RabbitConnection, queue: str) -> tuple[AbstractChannel | None, Any]:
    """A spare channel and the queue on it, or (None, None) if there is no such queue."""
    await backend.connect()
    if not await backend.queue_exists(queue):
        return None, None
    channel = await backend.connection.channel()
    return channel, await channel.get_queue(queue, ensure=False)


async def _messages(queue: Any) -> AsyncIterator[AbstractIncomingMessage]:
    """The queue's messages, got one by one without acking, until it has no more."""
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        yield message


async def _letters(
    queue: Any, topic: str, limit: int | None
) -> list[tuple[AbstractIncomingMessage, DeadLetter]]:
    """Up to ``limit`` dead letters (all when None), each with the message that holds it."""
    found: list[tuple[AbstractIncomingMessage, DeadLetter]] = []
    messages = _messages(queue)
    while limit is None or len(found) < limit:
        message = await anext(messages, None)
        if message is None:
            break
        letter = stored_letter(message.body, log, f"rabbitmq: {topic}.dlq")
        if letter is not None:
            found.append((message, letter))
    return found


async def dlq_list(backend: RabbitConnection, topic: str, limit: int) -> list[DeadLetter]:
    """Get up to ``limit`` records without acking; closing the channel puts them back."""
    channel, queue = await _browse(backend, f"{topic}.dlq")
    if channel is None:
        return []
    try:
        return [letter for _, letter in await _letters(queue, topic, limit)]
    finally:
        await channel.close()


async def dlq_replay(backend: RabbitConnection, topic: str, ids: Sequence[str] | None) -> int:
    """Re-publish each chosen message once (confirmed; however many letters hold its id),
    then ack its letters off the DLQ; the others go back when the browsing channel closes."""
    channel, queue = await _browse(backend, f"{topic}.dlq")
    if channel is None:
        return 0
    await backend.ensure_topic(topic)
    exchange = backend.exchange
    try:
        chosen = replays(await _letters(queue, topic, None), ids, AMQP)
        for replay in chosen:
            copy = message_of(replay.letter.data, replay.headers, replay.letter.id)
            await backend.confirm(exchange, copy, topic, topic)
            for message in replay.handles:
                await message.ack()
    finally:
        await channel.close()
    return len(chosen)


async def dlq_purge(backend: RabbitConnection, topic: str) -> int:
    """Purge ``<topic>.dlq``."""
    channel, queue = await _browse(backend, f"{topic}.dlq")
    if channel is None:
        return 0
    try:
        result = await queue.purge()
    finally:
        await channel.close()
    return int(result.message_count or 0)


async def dlq_count(backend: RabbitConnection, topic: str) -> int:
    """The DLQ queue's message count (a passive declare: no message is read)."""
    await backend.connect()
    name = f"{topic}.dlq"
    if not await backend.queue_exists(name):
        return 0
    channel = await backend.connection.channel()
    try:
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def topics(backend: RabbitConnection) -> list[str]:
    """The names in the topics registry (AMQP has no way to list queues)."""
    channel, queue = await _browse(backend, f"{backend.exchange_name}.topics")
    if channel is None:
        return []
    try:
        return sorted({message.body.decode() async for message in _messages(queue)})
    finally:
        await channel.close()
