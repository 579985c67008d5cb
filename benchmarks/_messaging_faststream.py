"""FastStream, the framework peer, on NATS, RabbitMQ or Redis, with the same methods as the
raw clients and interlink (``serial``, ``window``, ``consume``).

Its own module: one class that picks its broker by backend, apart from the raw clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

# Order is needed at run time: FastStream reads the handler's annotation to decode the payload.
from _messaging_shared import (
    AMQP,
    BATCH,
    NATS,
    REDIS,
    TIME_LIMIT,
    Counter,
    Order,
    _payload,
    unique,
)


class FastStream:
    """FastStream's broker for the backend, in its documented form."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.names: list[str] = []
        self.client: Any = None  # Redis: what broker.connect() returns, for pipelines

    async def _batch(self, broker: Any, name: str, message: Any, count: int) -> None:
        """``count`` confirms in flight: gathered publishes, or (Redis) one pipeline, as
        FastStream documents for batches."""
        if self.kind != "redis":
            await asyncio.gather(*[self._send(broker, name, message) for _ in range(count)])
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for _ in range(count):
                await broker.publish(message, stream=name, pipeline=pipe)
            await pipe.execute()

    def _broker(self) -> Any:
        if self.kind == "nats":
            from faststream.nats import NatsBroker

            return NatsBroker(NATS, logger=None)
        if self.kind == "rabbitmq":
            from faststream.rabbit import RabbitBroker

            return RabbitBroker(AMQP, logger=None)
        from faststream.redis import RedisBroker

        return RedisBroker(REDIS, logger=None)

    async def _prepare(self, broker: Any, name: str, group: bool) -> None:
        """Create the stream / queue / group the way the raw client does (FastStream would
        otherwise create them only when a subscriber starts)."""
        if self.kind == "nats":
            import nats

            nc = await nats.connect(NATS)
            await nc.jetstream().add_stream(name=name, subjects=[name])
            await nc.close()
        elif self.kind == "rabbitmq":
            from faststream.rabbit import RabbitQueue

            await broker.declare_queue(
                RabbitQueue(name, durable=True, arguments={"x-queue-type": "quorum"})
            )
        elif group:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(REDIS)
            await client.xgroup_create(name, "g", id="0", mkstream=True)
            await client.aclose()

    async def _send(self, broker: Any, name: str, message: Any) -> Any:
        if self.kind == "nats":
            # 5 s for the PubAck, as nats-py's JetStream and interlink wait (FastStream's own
            # default of 0.5 s fails a window of 500 on a loaded machine and ends the run)
            return await broker.publish(message, name, stream=name, timeout=5.0)
        if self.kind == "rabbitmq":
            return await broker.publish(message, queue=name)
        return await broker.publish(message, stream=name)

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        name = unique("fs")
        self.names.append(name)
        broker = self._broker()
        self.client = await broker.connect()
        try:
            await self._prepare(broker, name, False)
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await self._send(broker, name, _payload(pydantic))
                done += 1
            return done, time.perf_counter() - began
        finally:
            await broker.stop()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        name = unique("fs")
        self.names.append(name)
        broker = self._broker()
        self.client = await broker.connect()
        try:
            await self._prepare(broker, name, False)
            began, done = time.perf_counter(), 0
            while done < n and time.perf_counter() - began < TIME_LIMIT:
                await self._batch(broker, name, _payload(pydantic), 500)
                done += 500
            return done, time.perf_counter() - began
        finally:
            await broker.stop()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        name = unique("fs")
        self.names.append(name)
        broker = self._broker()
        got = Counter(n)

        async def handle_bytes(body: bytes) -> None:
            got.hit()

        async def handle_model(body: Order) -> None:
            got.hit()

        handler: Any = handle_model if pydantic else handle_bytes
        if self.kind == "nats":
            from faststream.nats import JStream, PullSub

            broker.subscriber(
                name, stream=JStream(name, declare=False), durable="g", pull_sub=PullSub(BATCH)
            )(handler)
        elif self.kind == "rabbitmq":
            from faststream.rabbit import RabbitQueue

            queue = RabbitQueue(name, durable=True, arguments={"x-queue-type": "quorum"})
            broker.subscriber(queue)(handler)
        else:
            from faststream.redis import StreamSub

            broker.subscriber(stream=StreamSub(name, group="g", consumer="c", max_records=BATCH))(
                handler
            )
        self.client = await broker.connect()
        try:
            await self._prepare(broker, name, True)
            for _ in range(0, n, 500):
                await self._batch(broker, name, _payload(pydantic), 500)
            began = time.perf_counter()
            await broker.start()
            return await got.wait(began)
        finally:
            await broker.stop()
