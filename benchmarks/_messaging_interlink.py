"""interlink's contenders: its ``Broker`` on a backend's URL (``Interlink``), and the backend
alone without the Broker and consumer layers (``BackendOnly``), to show where the time goes.

Its own module: the side under test, apart from the peers it is compared with.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

# Order is needed at run time: the subscriber reads the handler's annotation to decode it.
from _messaging_shared import (
    BYTES,
    CONCURRENCY,
    PREFETCH,
    TIME_LIMIT,
    Counter,
    Order,
    _payload,
    unique,
)

from interlink.messaging import Broker
from interlink.messaging.backend import Backend
from interlink.messaging.envelope import FIELDS, OutgoingMessage, headers_for


class Interlink:
    """interlink's Broker on ``url`` (the same code for every backend)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.topics: list[str] = []

    @staticmethod
    async def _prepare(broker: Broker, topic: str) -> None:
        """Create the topic with a group, as the others publish into a queue that exists (on
        RabbitMQ a topic without a group routes through the alternate exchange into its
        backlog queue: an extra hop per message no other contender pays)."""
        await broker.backend.ensure_group(topic, "g")  # type: ignore[attr-defined]
        await broker.publish(topic, BYTES)

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        self.topics.append(topic)
        async with Broker.from_url(self.url) as broker:
            await self._prepare(broker, topic)
            began = time.perf_counter()
            done = 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await broker.publish(topic, _payload(pydantic))
                done += 1
            return done, time.perf_counter() - began

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        self.topics.append(topic)
        async with Broker.from_url(self.url) as broker:
            await self._prepare(broker, topic)
            began = time.perf_counter()
            done = 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await broker.publish_many(topic, [_payload(pydantic)] * 1000)
                done += 1000
            return done, time.perf_counter() - began

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        self.topics.append(topic)
        got = Counter(n)
        broker = Broker.from_url(self.url, grace=1.0)
        if pydantic:

            @broker.subscriber(topic, group="g", concurrency=CONCURRENCY, prefetch=PREFETCH)
            async def handle_model(message: Order) -> None:
                got.hit()

        else:

            @broker.subscriber(topic, group="g", concurrency=CONCURRENCY, prefetch=PREFETCH)
            async def handle_bytes(message: bytes) -> None:
                got.hit()

        async with Broker.from_url(self.url) as loader:
            await loader.connect()
            await loader.backend.ensure_group(topic, "g")  # type: ignore[attr-defined]
            for _ in range(0, n, 1000):
                await loader.publish_many(topic, [_payload(pydantic)] * 1000)
        await broker.connect()  # connected before the clock starts, as the others are
        began = time.perf_counter()
        await broker.start()
        result = await got.wait(began)
        await broker.stop()
        return result

    async def latency(self, rate: float, seconds: float) -> list[float]:
        """Publish ``rate`` msg/s for ``seconds``; the consumer records now - sent."""
        topic = unique("lat")
        self.topics.append(topic)
        delays: list[float] = []
        total = int(rate * seconds)
        got = Counter(total + 1)
        broker = Broker.from_url(self.url, grace=1.0)

        @broker.subscriber(topic, group="g", concurrency=CONCURRENCY, prefetch=PREFETCH)
        async def handle(message: bytes) -> None:
            delays.append(time.perf_counter() - float(message[:24].decode()))
            got.hit()

        async with broker:
            await broker.publish(topic, b"%-1024f" % time.perf_counter())  # warm up
            await asyncio.sleep(0.2)
            warm = len(delays)
            began = time.perf_counter()
            for i in range(total):
                wait = began + i / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                await broker.publish(topic, b"%-1024f" % time.perf_counter())
            await got.wait(time.perf_counter())
        return delays[warm:]


class BackendOnly:
    """interlink's backend without the Broker and consumer layers: headers built once, then
    ``publish`` / ``publish_batch`` / ``subscribe`` + ``ack`` directly (where the time goes)."""

    def __init__(self, url: str, topics: list[str]) -> None:
        self.url = url
        self.topics = topics  # shared with Interlink, for the cleanup
        self.headers: dict[str, str] = {}
        self.id_name = FIELDS.id

    async def _open(self) -> tuple[Any, str]:
        backend = Backend.from_url(self.url)
        binding = getattr(backend, "binding", FIELDS)
        self.id_name = binding.id
        self.headers = headers_for(binding, message_id="", type="bytes", time=time.time())
        await backend.connect()
        topic = unique("il")
        self.topics.append(topic)
        await backend.ensure_group(topic, "g")  # type: ignore[attr-defined]
        return backend, topic

    def _items(self, count: int) -> list[OutgoingMessage]:
        items = []
        for _ in range(count):
            mid = uuid.uuid4().hex
            items.append(OutgoingMessage(BYTES, None, {**self.headers, self.id_name: mid}, mid))
        return items

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        backend, topic = await self._open()
        try:
            # One id per message, as published: NATS drops a repeated Nats-Msg-Id unstored.
            ids = [uuid.uuid4().hex for _ in range(n)]
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                mid = ids[done]
                headers = {**self.headers, self.id_name: mid}
                await backend.publish(topic, OutgoingMessage(BYTES, None, headers, mid))
                done += 1
            return done, time.perf_counter() - began
        finally:
            await backend.aclose()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        backend, topic = await self._open()
        try:
            items = self._items(1000)
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await backend.publish_batch(topic, items)
                done += 1000
            return done, time.perf_counter() - began
        finally:
            await backend.aclose()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        backend, topic = await self._open()
        try:
            for _ in range(0, n, 1000):
                await backend.publish_batch(topic, self._items(1000))
            got = 0
            began = time.perf_counter()
            deliveries = backend.subscribe(topic, "g", prefetch=PREFETCH)
            try:
                async for delivery in deliveries:
                    await delivery.ack()
                    got += 1
                    if got >= n or time.perf_counter() - began > TIME_LIMIT * 3:
                        break
            finally:
                await deliveries.aclose()  # type: ignore[attr-defined]
            return got, time.perf_counter() - began
        finally:
            await backend.aclose()
