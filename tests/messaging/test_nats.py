"""The backend contract against the NATS JetStream server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import nats
import pytest
from tests.messaging.contract import BackendContract

from interlink.messaging import Broker, PublishError

URL = "nats://127.0.0.1:4222"
PREFIX = "interlink:t-"  # the streams the contract's topics ("t-<hex>") live in


async def _streams() -> set[str]:
    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        names: set[str] = set()
        for info in await js.streams_info():
            names.add(info.config.name)
        return {n for n in names if n.startswith(PREFIX)}
    finally:
        await nc.close()


async def _delete(names: set[str]) -> None:
    nc = await nats.connect(URL)
    try:
        js = nc.jetstream()
        for name in names:
            await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(autouse=True)
def _drop_test_streams() -> Iterator[None]:
    """Delete the streams a test created, so the shared server does not fill up."""
    before = asyncio.run(_streams())
    yield
    asyncio.run(_delete(asyncio.run(_streams()) - before))


class TestNatsBackend(BackendContract):
    """Every contract test on JetStream (file storage, the shared server)."""

    def make_backend_url(self) -> str:
        return URL


async def _stored(topic: str) -> int:
    """How many messages the topic's stream holds."""
    nc = await nats.connect(URL)
    try:
        info = await nc.jetstream().stream_info(f"interlink:{topic}")
        return int(info.state.messages)
    finally:
        await nc.close()


def _topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_a_deleted_stream_is_recreated_by_the_next_publish() -> None:
    """A publish whose stream vanished (the server answers "no responders") creates the
    stream again and is confirmed, one at a time and in a batch."""
    topic = _topic()

    async def body() -> int:
        broker = Broker.from_url(URL)
        try:
            await broker.publish(topic, b"first")
            await _delete({f"interlink:{topic}"})
            await broker.publish(topic, b"second")
            await _delete({f"interlink:{topic}"})
            await broker.publish_many(topic, [b"third", b"fourth"])
            return await _stored(topic)
        finally:
            await broker.stop()

    assert asyncio.run(body()) == 2


def test_a_refused_publish_raises_with_the_servers_reason() -> None:
    """A PubAck carrying an error (here: bigger than the stream allows) is a PublishError
    naming the server's reason, for the message and for every message of a batch."""
    topic = _topic()

    async def body() -> list[str]:
        nc = await nats.connect(URL)
        js = nc.jetstream()
        await js.add_stream(name=f"interlink:{topic}", subjects=[topic], max_msg_size=64)
        await nc.close()
        broker = Broker.from_url(URL)
        errors = []
        try:
            with pytest.raises(PublishError) as one:
                await broker.publish(topic, b"x" * 1024)
            errors.append(str(one.value))
            with pytest.raises(PublishError) as many:
                await broker.publish_many(topic, [b"y" * 1024] * 3)
            errors.append(str(many.value))
        finally:
            await broker.stop()
        return errors

    one, many = asyncio.run(body())
    assert "maximum" in one.lower()
    assert "3 of 3 not confirmed" in many


def test_publishing_an_id_again_is_stored_again() -> None:
    """As on every backend, a publish repeated with its id is a second message (no
    Nats-Msg-Id on user publishes: the idempotent consumer is where duplicates end)."""
    topic = _topic()

    async def body() -> int:
        broker = Broker.from_url(URL)
        try:
            mid = await broker.publish(topic, b"once")
            await broker.publish(topic, b"once", message_id=mid)
            return await _stored(topic)
        finally:
            await broker.stop()

    assert asyncio.run(body()) == 2


def test_a_topic_stream_drops_what_every_group_acked_and_keeps_the_backlog() -> None:
    """Interest-based retention: messages published before the first group wait for it (the
    backlog consumer), and once the group acked them the stream holds nothing."""
    topic = _topic()

    async def body() -> tuple[int, list[bytes], int]:
        broker = Broker.from_url(URL)
        got: list[bytes] = []
        for i in range(3):
            await broker.publish(topic, b"%d" % i)
        before = await _stored(topic)

        @broker.subscriber(topic, group="g")
        async def handle(message: bytes) -> None:
            got.append(message)

        async with broker:
            for _ in range(500):
                if len(got) == 3 and await _stored(topic) == 0:
                    break
                await asyncio.sleep(0.02)
            left = await _stored(topic)
        return before, got, left

    before, got, left = asyncio.run(asyncio.wait_for(body(), 20))
    assert before == 3
    assert sorted(got) == [b"0", b"1", b"2"]
    assert left == 0


def test_a_publish_without_a_puback_times_out_and_leaves_nothing_waiting() -> None:
    """A message whose PubAck never comes fails with a TimeoutError after ``within`` s, and
    its reply token is forgotten (a late PubAck finds nothing to resolve)."""
    from interlink.messaging.backends.nats._publish import PubAcks

    class Silent:
        """A client that sends nothing anywhere."""

        def new_inbox(self) -> str:
            return "_INBOX.test"

        async def publish(self, *args: object, **kwargs: object) -> None:
            return None

    acks = PubAcks(Silent())  # type: ignore[arg-type]

    async def body() -> BaseException | None:
        return await acks.send_one("subject", b"x", {}, 0.05)

    error = asyncio.run(body())
    assert isinstance(error, TimeoutError)
    assert str(error) == "no PubAck"
    assert acks._futures == {}
