"""The backend contract against the Redis server on 127.0.0.1:6379 (Streams, consumer groups)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from support import until
from tests.messaging.contract import BackendContract, Order

from interlink.messaging import Broker
from interlink.messaging.backend import PublishError
from interlink.messaging.backends.redis import RedisBackend
from interlink.messaging.backends.redis._scripts import pack, parse_batch
from interlink.messaging.idempotency import RedisStore

URL = "redis://127.0.0.1:6379/0"
PATTERN = "interlink:t-*"  # the keys the contract's topics ("t-<hex>") live in


async def _keys() -> set[bytes]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        return {key async for key in client.scan_iter(match=PATTERN, count=1000)}
    finally:
        await client.aclose()


async def _delete(keys: set[bytes]) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(URL)
    try:
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def _drop_test_keys() -> Iterator[None]:
    """Delete the keys a test created, so the shared server does not fill up."""
    before = asyncio.run(_keys())
    yield
    asyncio.run(_delete(asyncio.run(_keys()) - before))


class TestRedisBackend(BackendContract):
    """Every contract test on Redis Streams (the shared server)."""

    def make_backend_url(self) -> str:
        return URL


def test_idempotent_store_gets_the_url_without_backend_options() -> None:
    """`idempotent=True` on a Redis broker whose URL carries backend options (which redis-py
    does not know) uses the same server for the store, and it works."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    broker = Broker.from_url(f"{URL}?visibility_timeout=1&block=0.5")
    seen: list[int] = []

    @broker.subscriber(topic, group="g", idempotent=True)
    async def handle(message: Order) -> None:
        seen.append(message.order_id)

    store = broker.subscriptions[0].idempotency
    assert isinstance(store, RedisStore)
    assert store._url == URL

    async def body() -> None:
        async with broker:
            mid = await broker.publish(topic, Order(order_id=1))
            await broker.publish(topic, Order(order_id=1), message_id=mid)  # a redelivery
            await broker.publish(topic, Order(order_id=2))
            await until(lambda: len(seen) == 2)
            await asyncio.sleep(0.2)

    asyncio.run(body())
    assert seen == [1, 2]


def test_packed_read_pairs_each_entry_with_its_fields() -> None:
    """READ's reply (one string of sources, ids and field counts, then every field in one
    MessagePack array) comes apart into the entries a plain XREADGROUP would give, whatever
    the field values hold (spaces included)."""
    strings = [b"data", b"first", b"ce_id", b"a b", b"data", b""]
    reply = [b"0 1-0 4 1 7-1 2", pack(strings)]
    assert parse_batch(reply) == [
        (0, b"1-0", {b"data": b"first", b"ce_id": b"a b"}, 1),
        (1, b"7-1", {b"data": b""}, 1),
    ]
    assert parse_batch([]) == []


def test_a_backlog_is_read_packed_with_attempts_from_the_retry_stream() -> None:
    """With more waiting than a read takes, reads go through the READ script: every message
    arrives once, in order, and a retry stream entry keeps its attempt count."""
    from interlink.messaging.backends.redis import RedisBackend
    from interlink.messaging.envelope import FIELDS, headers_for

    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> tuple[list[int], list[tuple[str, int]]]:
        broker = Broker.from_url(URL)
        await broker.connect()
        backend = broker.backend
        assert isinstance(backend, RedisBackend)
        await backend.ensure_group(topic, "g")
        await broker.publish_many(topic, [Order(order_id=i) for i in range(100)])
        retried: dict[Any, Any] = {b"data": b'{"order_id":-1}'}
        retried.update(headers_for(FIELDS, message_id="r1", type="Order", time=0.0, attempt=3))
        await backend.client.xadd(f"interlink:{topic}#retry:g", retried)
        order: list[int] = []
        attempts: list[tuple[str, int]] = []
        deliveries = backend.subscribe(topic, "g", prefetch=16)
        try:
            async for delivery in deliveries:
                order.append(Order.model_validate_json(delivery.envelope.payload).order_id)
                attempts.append((delivery.envelope.id, delivery.attempt))
                await delivery.ack()
                if len(order) == 101:
                    break
        finally:
            await deliveries.aclose()  # type: ignore[attr-defined]
            await broker.stop()
        return order, attempts

    order, attempts = asyncio.run(asyncio.wait_for(body(), 10))
    assert sorted(order) == [-1, *range(100)]
    assert [n for n in order if n >= 0] == list(range(100))
    assert ("r1", 3) in attempts
    assert all(attempt == 1 for mid, attempt in attempts if mid != "r1")


def _redis_backend(broker: Broker) -> RedisBackend:
    backend = broker.backend
    assert isinstance(backend, RedisBackend)
    return backend


def test_serial_publishes_go_through_the_lane_and_keep_their_order() -> None:
    """One publish at a time rides the lane connection (the pool's connections stay idle);
    each is an ordinary stream entry (the body in ``data``, the attributes in ``ce_*``
    fields), in publish order, trimmed by ``maxlen``."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> tuple[list[bytes], int, bool]:
        broker = Broker.from_url(f"{URL}?maxlen=10")
        await broker.connect()
        backend = _redis_backend(broker)
        for i in range(300):
            await broker.publish(topic, b"%d" % i)
        entries = await backend.client.xrange(f"interlink:{topic}")
        lane = backend._lane
        assert lane is not None
        used = lane.conn.is_connected
        await broker.stop()
        assert all(fields[b"ce_specversion"] == b"1.0" for _, fields in entries)
        return [fields[b"data"] for _, fields in entries], len(entries), used

    payloads, count, used = asyncio.run(asyncio.wait_for(body(), 10))
    assert used
    assert count < 300  # MAXLEN ~ 10 trims whole nodes, never below 10
    assert payloads == [b"%d" % i for i in range(300 - count, 300)]


def test_overlapping_publishes_share_lane_and_pool() -> None:
    """Publishes in flight at once: one on the lane, the others through the pool; all land."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> tuple[set[str], set[str]]:
        broker = Broker.from_url(URL)
        await broker.connect()
        ids = await asyncio.gather(*(broker.publish(topic, b"%d" % i) for i in range(50)))
        entries = await _redis_backend(broker).client.xrange(f"interlink:{topic}")
        await broker.stop()
        return set(ids), {fields[b"ce_id"].decode() for _, fields in entries}

    published, stored = asyncio.run(asyncio.wait_for(body(), 10))
    assert len(published) == 50
    assert stored == published


def test_a_broken_lane_falls_back_to_the_pool_and_reconnects() -> None:
    """The server drops the lane's connection: that publish still succeeds (through the
    pool), and the next one connects the lane again."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> int:
        broker = Broker.from_url(URL)
        await broker.connect()
        backend = _redis_backend(broker)
        await broker.publish(topic, b"first")
        lane = backend._lane
        assert lane is not None
        await lane.conn.send_command("CLIENT", "ID")
        lane_id = await lane.conn.read_response()
        await backend.client.execute_command("CLIENT", "KILL", "ID", lane_id)
        await broker.publish(topic, b"after the kill")
        await broker.publish(topic, b"on a new lane")
        connected = lane.conn.is_connected
        count = int(await backend.client.xlen(f"interlink:{topic}"))
        await broker.stop()
        assert connected
        return count

    assert asyncio.run(asyncio.wait_for(body(), 10)) == 3


def test_a_refused_publish_on_the_lane_is_a_publish_error() -> None:
    """An error reply (the key holds another type) fails the publish at once, and the lane
    stays usable."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> None:
        broker = Broker.from_url(URL)
        await broker.connect()
        backend = _redis_backend(broker)
        await broker.publish(f"{topic}-ok", b"warm")
        await backend.client.set(f"interlink:{topic}", b"not a stream")
        with pytest.raises(PublishError, match="WRONGTYPE"):
            await broker.publish(topic, b"refused")
        await broker.publish(f"{topic}-ok", b"still fine")
        assert await backend.client.xlen(f"interlink:{topic}-ok") == 2
        await broker.stop()

    asyncio.run(asyncio.wait_for(body(), 10))


def test_a_lane_publish_times_out_after_socket_timeout_then_recovers() -> None:
    """A server that does not answer within ``socket_timeout`` fails the publish (no second
    wait through the pool); the lane connects again for the next one."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> float:
        broker = Broker.from_url(f"{URL}?socket_timeout=0.2")
        await broker.connect()
        backend = _redis_backend(broker)
        await broker.publish(topic, b"warm")
        await backend.client.execute_command("CLIENT", "PAUSE", 600, "WRITE")
        began = time.monotonic()
        try:
            with pytest.raises(PublishError, match="TimeoutError"):
                await broker.publish(topic, b"paused")
        finally:
            took = time.monotonic() - began
            await asyncio.sleep(0.5)
        await broker.publish(topic, b"after")
        await broker.stop()
        return took

    took = asyncio.run(asyncio.wait_for(body(), 10))
    assert 0.15 < took < 0.5


def test_the_server_msgpack_of_any_length_is_read_back() -> None:
    """Every string header ``cmsgpack.pack`` writes (fixstr, str 8/16/32) and every array
    header size come apart into the strings the server packed."""
    import redis.asyncio as aioredis

    from interlink.messaging.backends.redis._scripts import _strings

    pack = "local t = {} for i, s in ipairs(ARGV) do t[i] = s end return cmsgpack.pack(t)"

    async def body() -> None:
        client = aioredis.Redis.from_url(URL)
        try:
            for sizes in ([], [0, 5, 31, 32, 255, 256, 65535, 65536], [1] * 15, [7] * 70000):
                strings = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
                packed = await client.eval(pack, 0, *strings)
                assert _strings(packed) == strings
        finally:
            await client.aclose()

    asyncio.run(asyncio.wait_for(body(), 30))


def test_closing_mid_backlog_gives_back_the_batch_read_ahead() -> None:
    """While a backlog lasts the next batch is read ahead; closing the subscription then hands
    back the batch it holds and the one under way, so another consumer of the group gets
    every message at once (not after the visibility timeout), none twice."""
    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> tuple[list[int], list[int], int]:
        broker = Broker.from_url(URL)  # visibility timeout 30 s: nothing comes back by it
        await broker.connect()
        backend = _redis_backend(broker)
        await backend.ensure_group(topic, "g")
        await broker.publish_many(topic, [b"%d" % i for i in range(1000)])
        first: list[int] = []
        deliveries = backend.subscribe(topic, "g", prefetch=64)
        async for delivery in deliveries:
            first.append(int(delivery.envelope.payload))
            await delivery.ack()
            if len(first) == 40:  # inside the second batch: the third is being read
                break
        await deliveries.aclose()  # type: ignore[attr-defined]
        rest: list[int] = []
        deliveries = backend.subscribe(topic, "g", prefetch=64)
        async for delivery in deliveries:
            rest.append(int(delivery.envelope.payload))
            await delivery.ack()
            if len(first) + len(rest) >= 1000:
                break
        await deliveries.aclose()  # type: ignore[attr-defined]
        pending = await backend.client.xpending(f"interlink:{topic}", "g")
        await broker.stop()
        return first, rest, int(pending["pending"])

    first, rest, pending = asyncio.run(asyncio.wait_for(body(), 10))
    assert first == list(range(40))
    assert sorted(first + rest) == list(range(1000))
    assert pending == 0


def test_a_fetch_cancelled_as_it_reads_ahead_gives_back_what_it_read() -> None:
    """A consumer stopping just as a batch came in and the next read went out: both go back
    at once, not after the visibility timeout."""
    from interlink.messaging.backends.redis._subscription import Subscription

    topic = f"t-{uuid.uuid4().hex[:12]}"

    async def body() -> tuple[int, int]:
        broker = Broker.from_url(URL)
        await broker.connect()
        backend = _redis_backend(broker)
        await backend.ensure_group(topic, "g")
        await broker.publish_many(topic, [b"%d" % i for i in range(200)])
        sub = Subscription(backend.connection, topic, "g")
        backend._subs.add(sub)
        fetch = asyncio.ensure_future(sub.next_batch(64, 100))
        for _ in range(100_000):  # until the batch is in and the next read just started
            if sub.ahead is not None:
                break
            await asyncio.sleep(0)
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        ahead, sub.ahead = sub.ahead, None
        assert ahead is not None
        sub.abandon(ahead)
        for _ in range(200):  # both releases land in the group's retry stream
            retried = int(await backend.client.xlen(f"interlink:{topic}#retry:g"))
            if retried == 64:
                break
            await asyncio.sleep(0.01)
        pending = await backend.client.xpending(f"interlink:{topic}", "g")
        await broker.stop()
        return retried, int(pending["pending"])

    assert asyncio.run(asyncio.wait_for(body(), 10)) == (64, 0)
