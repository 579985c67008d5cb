"""The raw clients each backend is measured against: nats-py (JetStream), aio-pika (a quorum
queue with publisher confirms) and redis-py (Streams), with ``messaging.py``'s methods:
``serial``, ``window`` and ``consume`` return (messages, seconds) for one measurement.

Its own module as the baseline every ratio is taken to, apart from the contenders.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from _messaging_shared import (
    AMQP,
    BATCH,
    NATS,
    PREFETCH,
    REDIS,
    TIME_LIMIT,
    Counter,
    Order,
    _raw_bytes,
    unique,
)


class NatsRaw:
    """nats-py JetStream: publish (PubAck), publish_async + gather, pull fetch + ack."""

    def __init__(self) -> None:
        self.streams: list[str] = []

    async def _js(self) -> Any:
        import nats

        nc = await nats.connect(NATS)
        return nc, nc.jetstream()

    async def _stream(self, js: Any) -> str:
        name = unique("nr")
        self.streams.append(name)
        await js.add_stream(name=name, subjects=[name])
        return name

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        nc, js = await self._js()
        try:
            subject = await self._stream(js)
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await js.publish(subject, _raw_bytes(pydantic))
                done += 1
            return done, time.perf_counter() - began
        finally:
            await nc.close()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        nc, js = await self._js()
        try:
            subject = await self._stream(js)
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                futures = [
                    await js.publish_async(subject, _raw_bytes(pydantic)) for _ in range(1000)
                ]
                await asyncio.gather(*futures)
                done += 1000
            return done, time.perf_counter() - began
        finally:
            await nc.close()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        nc, js = await self._js()
        try:
            subject = await self._stream(js)
            for _ in range(0, n, 1000):
                await asyncio.gather(
                    *[await js.publish_async(subject, _raw_bytes(pydantic)) for _ in range(1000)]
                )
            got = 0
            began = time.perf_counter()
            sub = await js.pull_subscribe(subject, durable="g", stream=subject)
            while got < n and time.perf_counter() - began < TIME_LIMIT * 3:
                for msg in await sub.fetch(BATCH, timeout=2):
                    if pydantic:
                        Order.model_validate_json(msg.data)
                    got += 1
                    await msg.ack()
            return got, time.perf_counter() - began
        finally:
            await nc.close()

    async def cleanup(self, topics: list[str]) -> None:
        nc, js = await self._js()
        try:
            names = self.streams + [f"interlink:{t}" for t in topics]
            names += [f"interlink:{t}:dlq" for t in topics]
            for name in names:
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        finally:
            await nc.close()


class RabbitRaw:
    """aio-pika: a quorum queue, publisher confirms (awaited, or gathered), prefetch + ack."""

    def __init__(self) -> None:
        self.queues: list[str] = []

    async def _open(self) -> tuple[Any, Any, str]:
        import aio_pika

        conn = await aio_pika.connect(AMQP)
        channel = await conn.channel(publisher_confirms=True)
        name = unique("rr")
        self.queues.append(name)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        return conn, channel, name

    @staticmethod
    def _message(pydantic: bool) -> Any:
        import aio_pika

        return aio_pika.Message(
            _raw_bytes(pydantic), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        )

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        conn, channel, name = await self._open()
        try:
            exchange = channel.default_exchange
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await exchange.publish(self._message(pydantic), name)
                done += 1
            return done, time.perf_counter() - began
        finally:
            await conn.close()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        conn, channel, name = await self._open()
        try:
            exchange = channel.default_exchange
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await asyncio.gather(
                    *[exchange.publish(self._message(pydantic), name) for _ in range(500)]
                )
                done += 500
            return done, time.perf_counter() - began
        finally:
            await conn.close()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        conn, channel, name = await self._open()
        try:
            exchange = channel.default_exchange
            for _ in range(0, n, 500):
                await asyncio.gather(
                    *[exchange.publish(self._message(pydantic), name) for _ in range(500)]
                )
            reader = await conn.channel()
            await reader.set_qos(prefetch_count=BATCH)
            queue = await reader.get_queue(name, ensure=False)
            got = 0
            began = time.perf_counter()
            async with queue.iterator() as messages:
                async for message in messages:
                    if pydantic:
                        Order.model_validate_json(message.body)
                    await message.ack()
                    got += 1
                    if got >= n or time.perf_counter() - began > TIME_LIMIT * 3:
                        break
            return got, time.perf_counter() - began
        finally:
            await conn.close()

    async def end_to_end(self, n: int) -> tuple[int, float]:
        """Publish in confirmed windows of 500 while a consumer acks, until all arrived."""
        conn, channel, name = await self._open()
        try:
            reader = await conn.channel()
            await reader.set_qos(prefetch_count=PREFETCH)
            queue = await reader.get_queue(name, ensure=False)
            got = Counter(n)

            async def on_message(message: Any) -> None:
                await message.ack()
                got.hit()

            await queue.consume(on_message)
            exchange = channel.default_exchange
            began = time.perf_counter()
            for _ in range(0, n, 500):
                await asyncio.gather(
                    *[exchange.publish(self._message(False), name) for _ in range(500)]
                )
            return await got.wait(began)
        finally:
            await conn.close()

    async def cleanup(self, topics: list[str]) -> None:
        import aio_pika

        conn = await aio_pika.connect(AMQP)
        try:
            channel = await conn.channel()
            names = list(self.queues)
            for t in topics:
                names += [f"{t}:g", f"{t}:#backlog", f"{t}.dlq"]
            for name in names:
                with contextlib.suppress(Exception):
                    await channel.queue_delete(name, if_unused=False, if_empty=False)
            registry = await channel.declare_queue("interlink.topics", durable=True)
            while (message := await registry.get(no_ack=False, fail=False)) is not None:
                if message.body.decode().startswith("bench-"):
                    await message.ack()
            await channel.close()
        finally:
            await conn.close()


class RedisRaw:
    """redis-py: XADD (awaited, or one pipeline per batch), XREADGROUP + one XACK per batch."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def _client(self) -> Any:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(REDIS)

    def _key(self) -> str:
        key = unique("xr")
        self.keys.append(key)
        return key

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        client, key = self._client(), self._key()
        try:
            await client.ping()
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await client.xadd(key, {"d": _raw_bytes(pydantic)})
                done += 1
            return done, time.perf_counter() - began
        finally:
            await client.aclose()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        client, key = self._client(), self._key()
        try:
            await client.ping()
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(1000):
                        pipe.xadd(key, {"d": _raw_bytes(pydantic)})
                    await pipe.execute()
                done += 1000
            return done, time.perf_counter() - began
        finally:
            await client.aclose()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        client, key = self._client(), self._key()
        try:
            for _ in range(0, n, 1000):
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(1000):
                        pipe.xadd(key, {"d": _raw_bytes(pydantic)})
                    await pipe.execute()
            await client.xgroup_create(key, "g", id="0")
            got = 0
            began = time.perf_counter()
            while got < n and time.perf_counter() - began < TIME_LIMIT * 3:
                reply = await client.xreadgroup("g", "c", {key: ">"}, count=BATCH, block=1000)
                for _, entries in reply or ():
                    for _, fields in entries:
                        if pydantic:
                            Order.model_validate_json(fields[b"d"])
                        got += 1
                    await client.xack(key, "g", *[eid for eid, _ in entries])
            return got, time.perf_counter() - began
        finally:
            await client.aclose()

    async def cleanup(self, topics: list[str]) -> None:
        client = self._client()
        try:
            keys = list(self.keys)
            for t in topics:
                keys += [k async for k in client.scan_iter(match=f"interlink:{t}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
