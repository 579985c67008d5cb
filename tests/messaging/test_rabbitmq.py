"""The backend contract against the RabbitMQ server on 127.0.0.1:5672 (quorum queues)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
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
