"""Dead letters in RabbitMQ (list, replay, purge) and the topic list, both read by getting
messages from a queue without acking them (they go back when the channel closes)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractChannel

from interlink.messaging.backends.rabbitmq._connection import RabbitConnection, message_of
from interlink.messaging.envelope import (
    AMQP,
    DeadLetter,
    EnvelopeError,
    decode_dead_letter,
    with_id,
)

__all__ = ["dlq_list", "dlq_purge", "dlq_replay", "topics"]

log = logging.getLogger("interlink.messaging.rabbitmq")


async def _browse(backend: RabbitConnection, queue: str) -> tuple[AbstractChannel | None, Any]:
    """A spare channel and the queue on it, or (None, None) if there is no such queue."""
    await backend.connect()
    if not await backend.queue_exists(queue):
        return None, None
    channel = await backend.connection.channel()
    return channel, await channel.get_queue(queue, ensure=False)


async def dlq_list(backend: RabbitConnection, topic: str, limit: int) -> list[DeadLetter]:
    """Get up to ``limit`` records without acking; closing the channel puts them back."""
    channel, queue = await _browse(backend, f"{topic}.dlq")
    if channel is None:
        return []
    letters: list[DeadLetter] = []
    try:
        while len(letters) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                letters.append(decode_dead_letter(message.body))
            except EnvelopeError:
                log.warning("rabbitmq: %s.dlq holds a record that is not a dead letter", topic)
    finally:
        await channel.close()
    return letters


async def dlq_replay(backend: RabbitConnection, topic: str, ids: Sequence[str] | None) -> int:
    """Re-publish each chosen message once (confirmed; however many letters hold its id),
    then ack its letters off the DLQ; the others go back when the browsing channel closes."""
    channel, queue = await _browse(backend, f"{topic}.dlq")
    if channel is None:
        return 0
    await backend.ensure_topic(topic)
    exchange = backend.exchange
    wanted = None if ids is None else set(ids)
    done: set[str] = set()
    try:
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            try:
                letter = decode_dead_letter(message.body)
            except EnvelopeError:
                continue
            if wanted is not None and letter.id not in wanted:
                continue
            if letter.id not in done:  # one message per id, however many letters hold it
                headers = with_id(AMQP, letter.headers, letter.id)
                copy = message_of(letter.data, headers, letter.id)
                await backend.confirm(exchange, copy, topic, topic)
                done.add(letter.id)
            await message.ack()
    finally:
        await channel.close()
    return len(done)


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
    names: set[str] = set()
    try:
        while True:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            names.add(message.body.decode())
    finally:
        await channel.close()
    return sorted(names)
