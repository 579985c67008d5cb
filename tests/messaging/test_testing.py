"""The testing kit: a memory broker and `settled()`, used the way the docs show."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from interlink import Retry
from interlink.messaging.testing import memory_broker, settled


class OrderPlaced(BaseModel):
    order_id: int
    amount: int


def test_docs_example_charges_and_dead_letters() -> None:
    """The docs' example: good orders are charged, a bad one ends in the DLQ."""
    charged: list[int] = []
    broker = memory_broker()

    @broker.subscriber("orders", group="payments", retry=Retry(retries=2, backoff=0.01))
    async def charge(order: OrderPlaced) -> None:
        if order.amount <= 0:
            raise ValueError(f"bad amount {order.amount}")
        charged.append(order.order_id)

    async def body() -> None:
        async with broker:
            await broker.publish("orders", OrderPlaced(order_id=1, amount=5))
            await broker.publish("orders", OrderPlaced(order_id=2, amount=0))
            await settled(broker)
            [letter] = await broker.dlq_list("orders")
            assert letter.attempts == 3
            assert letter.reason.startswith("bad amount 0")

    asyncio.run(body())
    assert charged == [1]


def test_settled_gives_up_after_within() -> None:
    """A handler that never finishes makes settled() time out."""
    broker = memory_broker(grace=0.01)

    @broker.subscriber("t")
    async def hang(message: bytes) -> None:
        await asyncio.Event().wait()

    async def body() -> None:
        async with broker:
            await broker.publish("t", b"x")
            await settled(broker, within=0.05)

    with pytest.raises(TimeoutError, match=r"still pending after 0\.05s"):
        asyncio.run(body())


def test_settled_needs_a_memory_broker() -> None:
    """settled() refuses other backends instead of returning at once."""
    from interlink.messaging import Broker

    with pytest.raises(TypeError, match="needs a memory:// broker, not SqliteBackend"):
        asyncio.run(settled(Broker.from_url("sqlite:///x.db")))
