"""The backend contract against the RabbitMQ server on 127.0.0.1:5672 (quorum queues)."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from tests.messaging.contract import BackendContract

from interlink.messaging.backends.rabbitmq import delay_step

URL = "amqp://guest:guest@127.0.0.1:5672/"
# The queues of the contract's topics ("t-<hex>"): groups, backlogs and DLQs.
TEST_QUEUE = re.compile(r"^t-[0-9a-f]{12}[:.]")


async def _drop(queues: list[str]) -> None:
    import aio_pika

    conn = await aio_pika.connect(URL)
    try:
        channel = await conn.channel()
        for name in queues:
            await channel.queue_delete(name, if_unused=False, if_empty=False)
        registry = await channel.declare_queue("interlink.topics", durable=True)
        while (message := await registry.get(no_ack=False, fail=False)) is not None:
            if re.match(r"^t-[0-9a-f]{12}", message.body.decode()):
                await message.ack()
        await channel.close()  # the other registry entries go back
    finally:
        await conn.close()


@pytest.fixture(scope="module", autouse=True)
def _drop_test_queues() -> Iterator[None]:
    """After the module, delete the queues its tests created (best effort: AMQP cannot list
    queues, so this needs ``rabbitmqctl`` on the test machine)."""
    yield
    if shutil.which("rabbitmqctl") is None:
        return
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "name", "--no-table-headers", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = [n.strip() for n in listed.stdout.splitlines() if TEST_QUEUE.match(n.strip())]
    asyncio.run(_drop(names))


class TestRabbitBackend(BackendContract):
    """Every contract test on RabbitMQ (quorum queues, the shared server)."""

    def make_backend_url(self) -> str:
        return URL


@pytest.mark.parametrize(
    ("delay", "step"),
    [
        (0.0, 1),
        (0.001, 1),
        (0.1, 100),
        (0.2, 200),
        (0.137, 150),
        (0.26, 300),
        (7.1, 8000),
        (0.155, 180),
    ],
)
def test_delay_rounds_up_to_a_step(delay: float, step: int) -> None:
    """A retry delay maps to the next delay queue at or above it."""
    assert delay_step(delay) == step


def test_delay_steps_are_at_most_a_quarter_longer() -> None:
    """No delay waits more than 25% longer than asked (above the 1 ms floor)."""
    for ms in range(1, 100_000, 7):
        assert ms <= delay_step(ms / 1000) <= ms * 1.25


def test_an_existing_dlq_with_other_limits_is_kept_and_the_policy_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DLQ queue declared before without interlink's limits cannot take them (RabbitMQ
    refuses new arguments): dead-lettering still works, and the warning names the queue and
    the ``rabbitmqctl set_policy`` that applies the limits."""
    import aio_pika

    from interlink.messaging import Broker

    topic = f"t-{uuid.uuid4().hex[:12]}"
    handled = asyncio.Event()

    async def scenario() -> list[str]:
        conn = await aio_pika.connect(URL)
        try:
            channel = await conn.channel()
            await channel.declare_queue(f"{topic}.dlq", durable=True)  # no limits
        finally:
            await conn.close()
        broker = Broker.from_url(f"{URL}?dlq_max_count=7&dlq_max_age=60", grace=1.0)

        @broker.subscriber(topic, group="g", max_deliveries=1)
        async def handle(message: bytes) -> None:
            handled.set()
            raise RuntimeError("poison")

        async with broker:
            await broker.publish(topic, b"x")
            await asyncio.wait_for(handled.wait(), 20)
            for _ in range(200):
                if await broker.dlq_count(topic) == 1:
                    break
                await asyncio.sleep(0.05)
            return [letter.reason for letter in await broker.dlq_list(topic, 10)]

    with caplog.at_level(logging.WARNING, logger="interlink.messaging.rabbitmq"):
        reasons = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(reasons) == 1
    assert "poison" in reasons[0]
    warned = [r.getMessage() for r in caplog.records if f"{topic}.dlq" in r.getMessage()]
    assert warned, "no warning about the existing DLQ queue"
    assert "rabbitmqctl set_policy interlink-dlq" in warned[0]
    assert '"max-length": 7' in warned[0]
    assert '"message-ttl": 60000' in warned[0]


def test_claim_lease_is_the_visibility_timeout() -> None:
    """An idempotency claim of a consumer that died lasts the URL's ``claim_lease`` (10 s by
    default), not the store's 60 s: RabbitMQ redelivers at once, the claim is all the wait."""
    from interlink.messaging.backends.rabbitmq import RabbitBackend

    assert RabbitBackend(URL).visibility_timeout == 10.0
    assert RabbitBackend(f"{URL}?claim_lease=2.5").visibility_timeout == 2.5
    with pytest.raises(ValueError, match="claim_lease"):
        RabbitBackend(f"{URL}?claim_lease=0")


def test_a_consumer_whose_channel_is_lost_subscribes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The subscription's channel closes under it (a channel error, a reconnect): the
    consumer subscribes anew, and what is published afterwards is still delivered."""
    from interlink.messaging import Broker

    topic = f"t-{uuid.uuid4().hex[:12]}"
    got: list[bytes] = []

    async def until(count: int) -> None:
        for _ in range(400):
            if len(got) >= count:
                return
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        broker = Broker.from_url(URL, grace=1.0)

        @broker.subscriber(topic, group="g")
        async def handle(message: bytes) -> None:
            got.append(message)

        async with broker:
            await broker.publish(topic, b"before")
            await until(1)
            channels = list(broker.backend._channels)  # type: ignore[attr-defined]
            assert len(channels) == 1
            await (await channels[0].get_underlay_channel()).close()
            await broker.publish(topic, b"after")
            await until(2)

    with caplog.at_level(logging.ERROR, logger="interlink.messaging"):
        asyncio.run(asyncio.wait_for(scenario(), 60))
    assert got == [b"before", b"after"]
    assert any("resubscribing" in r.getMessage() for r in caplog.records)
