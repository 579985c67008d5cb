"""Services that do not run interlink, on the real servers: raw clients (nats-py, aio-pika,
redis-py) publish plain JSON and CloudEvents in binary and structured mode, and interlink
consumes them; interlink publishes, and the raw clients read the body as plain JSON and the
metadata from the broker's native headers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import nats
import redis.asyncio as aioredis
from pydantic import BaseModel

from interlink.messaging import Broker, current_message

NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"


class Order(BaseModel):
    order_id: int


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


async def _until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _structured(event_id: str, order_id: int) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/billing-go",
            "type": "com.example.order",
            "datacontenttype": "application/json",
            "data": {"order_id": order_id},
        }
    ).encode()


Seen = list[tuple[int, str, str, str]]


@asynccontextmanager
async def _consuming(url: str, topic: str) -> AsyncIterator[tuple[Broker, Seen]]:
    """An interlink broker consuming ``topic`` into (order id, id, type, source) rows."""
    broker = Broker.from_url(url)
    seen: Seen = []

    @broker.subscriber(topic, group="svc")
    async def handle(order: Order) -> None:
        envelope = current_message().envelope
        seen.append((order.order_id, envelope.id, envelope.type, envelope.source))

    async with broker:
        yield broker, seen


def _check_three_shapes(seen: Seen) -> None:
    plain, binary, structured = sorted(seen)
    assert plain[0] == 1
    assert plain[1]  # the broker's own id
    assert plain[2] == "Order"  # from the subscriber's model
    assert binary == (2, "bin-2", "com.example.order", "/billing-go")
    assert structured == (3, "st-3", "com.example.order", "/billing-go")


# -- NATS --------------------------------------------------------------------------------


def test_nats_raw_publishers_reach_interlink() -> None:
    """nats-py publishes plain JSON, a binary-mode CloudEvent (ce- headers) and a structured
    one; interlink's typed handler gets all three."""
    topic = _name()

    async def body() -> Seen:
        async with _consuming(NATS_URL, topic) as (_, seen):
            nc = await nats.connect(NATS_URL)
            try:
                js = nc.jetstream()
                await js.publish(topic, b'{"order_id": 1}')
                binary = {
                    "ce-specversion": "1.0",
                    "ce-id": "bin-2",
                    "ce-source": "/billing-go",
                    "ce-type": "com.example.order",
                    "content-type": "application/json",
                }
                await js.publish(topic, b'{"order_id": 2}', headers=binary)
                await js.publish(
                    topic,
                    _structured("st-3", 3),
                    headers={"content-type": "application/cloudevents+json"},
                )
                await _until(lambda: len(seen) == 3)
            finally:
                await nc.close()
        return seen

    _check_three_shapes(_run(body()))


def test_nats_raw_consumer_reads_interlink_messages() -> None:
    """What interlink publishes on NATS is the model's JSON, with ce- headers."""
    topic = _name()

    async def body() -> tuple[bytes, dict[str, str], str]:
        broker = Broker.from_url(NATS_URL)
        nc = await nats.connect(NATS_URL)
        try:
            mid = await broker.publish(topic, Order(order_id=7), key="k7")
            sub = await nc.jetstream().pull_subscribe(topic, durable=_name("raw"))
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack()
            return msg.data, dict(msg.headers or {}), mid
        finally:
            await nc.close()
            await broker.stop()

    data, headers, mid = _run(body())
    assert json.loads(data) == {"order_id": 7}
    assert headers["ce-id"] == mid
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "Order"
    assert headers["ce-source"] == "/interlink"
    assert headers["ce-partitionkey"] == "k7"
    assert headers["content-type"] == "application/json"
    assert headers["ce-time"].endswith("Z")


# -- RabbitMQ ----------------------------------------------------------------------------


def test_rabbitmq_raw_publishers_reach_interlink() -> None:
    """aio-pika publishes plain JSON, a binary-mode CloudEvent (cloudEvents: application
    properties, AMQP content-type) and a structured one; interlink gets all three."""
    topic = _name()

    async def body() -> Seen:
        async with _consuming(AMQP_URL, topic) as (_, seen):
            conn = await aio_pika.connect(AMQP_URL)
            try:
                channel = await conn.channel()
                exchange = await channel.get_exchange("interlink")
                await exchange.publish(aio_pika.Message(b'{"order_id": 1}'), topic)
                binary = {
                    "cloudEvents:specversion": "1.0",
                    "cloudEvents:id": "bin-2",
                    "cloudEvents:source": "/billing-go",
                    "cloudEvents:type": "com.example.order",
                }
                await exchange.publish(
                    aio_pika.Message(
                        b'{"order_id": 2}', headers=binary, content_type="application/json"
                    ),
                    topic,
                )
                await exchange.publish(
                    aio_pika.Message(
                        _structured("st-3", 3), content_type="application/cloudevents+json"
                    ),
                    topic,
                )
                await _until(lambda: len(seen) == 3)
            finally:
                await conn.close()
        return seen

    _check_three_shapes(_run(body()))


def test_rabbitmq_raw_consumer_reads_interlink_messages() -> None:
    """What interlink publishes on RabbitMQ is the model's JSON, with cloudEvents: properties
    and the AMQP content type."""
    topic = _name()

    async def body() -> tuple[bytes, dict[str, Any], str | None, str]:
        broker = Broker.from_url(AMQP_URL)
        await broker.connect()
        conn = await aio_pika.connect(AMQP_URL)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind("interlink", routing_key=topic)
            mid = await broker.publish(topic, Order(order_id=7), key="k7")
            message = None
            for _ in range(500):
                message = await queue.get(fail=False)
                if message is not None:
                    break
                await asyncio.sleep(0.01)
            assert message is not None
            await message.ack()
            return message.body, dict(message.headers), message.content_type, mid
        finally:
            await conn.close()
            await broker.stop()

    data, headers, content_type, mid = _run(body())
    assert json.loads(data) == {"order_id": 7}
    assert content_type == "application/json"
    assert headers["cloudEvents:id"] == mid
    assert headers["cloudEvents:specversion"] == "1.0"
    assert headers["cloudEvents:type"] == "Order"
    assert headers["cloudEvents:partitionkey"] == "k7"


# -- Redis Streams -----------------------------------------------------------------------


def test_redis_raw_publishers_reach_interlink() -> None:
    """redis-py adds plain JSON in ``data``, a binary-mode CloudEvent (ce_ fields) and a
    structured one; interlink gets all three."""
    topic = _name()

    async def body() -> Seen:
        async with _consuming(REDIS_URL, topic) as (_, seen):
            r = aioredis.Redis.from_url(REDIS_URL)
            key = f"interlink:{topic}"
            try:
                await r.xadd(key, {"data": b'{"order_id": 1}'})
                binary = {
                    "data": b'{"order_id": 2}',
                    "ce_specversion": "1.0",
                    "ce_id": "bin-2",
                    "ce_source": "/billing-go",
                    "ce_type": "com.example.order",
                    "content-type": "application/json",
                }
                await r.xadd(key, binary)  # type: ignore[arg-type]
                await r.xadd(
                    key,
                    {
                        "data": _structured("st-3", 3),
                        "content-type": "application/cloudevents+json",
                    },
                )
                await _until(lambda: len(seen) == 3)
            finally:
                await r.delete(key)
                await r.aclose()
        return seen

    _check_three_shapes(_run(body()))


def test_redis_entry_of_plain_fields_is_a_json_object() -> None:
    """``XADD s * order_id 5`` (no ``data`` field) is read as the object of its fields."""
    topic = _name()

    async def body() -> Seen:
        async with _consuming(REDIS_URL, topic) as (_, seen):
            r = aioredis.Redis.from_url(REDIS_URL)
            try:
                await r.xadd(f"interlink:{topic}", {"order_id": "5"})
                await _until(lambda: len(seen) == 1)
            finally:
                await r.delete(f"interlink:{topic}")
                await r.aclose()
        return seen

    [(order_id, mid, type_name, _)] = _run(body())
    assert (order_id, type_name) == (5, "Order")
    assert "-" in mid  # the stream entry id


def test_redis_foreign_fields_named_like_internal_ones_never_block_the_batch() -> None:
    """Entries with an ``a`` field (once the delivery counter) or a ``ce_attempt`` holding a
    space neither crash the subscription nor hold up the good messages read with them; one
    that fails its model is dead-lettered with its body and fields."""
    topic = _name()

    async def body() -> tuple[Seen, float, list[Any]]:
        async with _consuming(REDIS_URL, topic) as (broker, seen):
            r = aioredis.Redis.from_url(REDIS_URL)
            key = f"interlink:{topic}"
            try:
                began = time.monotonic()
                for i in range(3):
                    await broker.publish(topic, Order(order_id=i))
                await r.xadd(key, {"data": b'{"order_id": 10}', "a": "1 2", "ce_attempt": "x y"})
                await r.xadd(key, {"data": b"not json", "a": "oops"})
                for i in range(3, 6):
                    await broker.publish(topic, Order(order_id=i))
                await _until(lambda: len(seen) == 7)
                took = time.monotonic() - began
                letters: list[Any] = []
                for _ in range(500):
                    letters = await broker.dlq_list(topic, 10)
                    if letters:
                        break
                    await asyncio.sleep(0.02)
            finally:
                await r.delete(key, f"{key}.dlq")
                await r.aclose()
        return seen, took, letters

    seen, took, letters = _run(body())
    assert sorted(order_id for order_id, *_ in seen) == [0, 1, 2, 3, 4, 5, 10]
    assert took < 10  # not the 30 s visibility timeout
    [letter] = letters
    assert letter.data == b"not json"
    assert letter.headers["a"] == "oops"


def test_redis_raw_consumer_reads_interlink_messages() -> None:
    """What interlink publishes on Redis is an entry whose ``data`` is the model's JSON and
    whose ``ce_*`` fields are the attributes, single publishes and batches alike."""
    topic = _name()

    async def body() -> tuple[list[dict[bytes, bytes]], list[str]]:
        broker = Broker.from_url(REDIS_URL)
        r = aioredis.Redis.from_url(REDIS_URL)
        try:
            first = await broker.publish(topic, Order(order_id=7), key="k7")
            rest = await broker.publish_many(topic, [Order(order_id=8), Order(order_id=9)])
            entries = await r.xrange(f"interlink:{topic}")
            return [fields for _, fields in entries], [first, *rest]
        finally:
            await r.delete(f"interlink:{topic}")
            await r.aclose()
            await broker.stop()

    entries, ids = _run(body())
    assert [json.loads(fields[b"data"]) for fields in entries] == [
        {"order_id": 7},
        {"order_id": 8},
        {"order_id": 9},
    ]
    assert [fields[b"ce_id"].decode() for fields in entries] == ids
    assert all(fields[b"ce_type"] == b"Order" for fields in entries)
    assert all(fields[b"ce_specversion"] == b"1.0" for fields in entries)
    assert entries[0][b"ce_partitionkey"] == b"k7"
    assert entries[1][b"content-type"] == b"application/json"
