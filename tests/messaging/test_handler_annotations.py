"""Handler annotations are resolved when the subscriber is declared, also with
``from __future__ import annotations``; one that cannot be resolved fails right there."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel

from interlink.messaging import Broker

if TYPE_CHECKING:
    from interlink.messaging import Envelope  # only for the type checker: a string at run time

    class Hidden(BaseModel):  # a model the running code never sees
        name: str


class Order(BaseModel):
    id: str


def deliver(broker: Broker, topic: str, message: object) -> None:
    async def main() -> None:
        async with broker:
            await broker.publish(topic, message)
            for _ in range(200):
                if got:
                    return
                await asyncio.sleep(0.01)

    asyncio.run(main())


got: list[object] = []


def test_envelope_imported_for_type_checking_only_is_an_envelope() -> None:
    """``env: Envelope`` with Envelope imported under TYPE_CHECKING gets the envelope."""
    got.clear()
    broker = Broker.from_url("memory://")

    @broker.subscriber("orders.annotated", group="g")
    async def handle(env: Envelope) -> None:
        got.append(env)

    deliver(broker, "orders.annotated", b"raw")
    assert [type(e).__name__ for e in got] == ["Envelope"]
    assert got[0].payload == b"raw"  # type: ignore[attr-defined]


def test_envelope_imported_inside_a_function_is_an_envelope() -> None:
    """A local import (invisible to the handler's module) resolves too."""
    from interlink.messaging import Envelope as LocalEnvelope

    got.clear()
    broker = Broker.from_url("memory://")

    @broker.subscriber("orders.local", group="g")
    async def handle(env: LocalEnvelope) -> None:
        got.append(env)

    deliver(broker, "orders.local", b"raw")
    assert isinstance(got[0], LocalEnvelope)


def test_a_module_level_model_is_validated() -> None:
    """A string annotation naming a model of the module resolves to the model."""
    got.clear()
    broker = Broker.from_url("memory://")

    @broker.subscriber("orders.model", group="g")
    async def handle(order: Order) -> None:
        got.append(order)

    deliver(broker, "orders.model", Order(id="o-1"))
    assert got == [Order(id="o-1")]


def test_an_unresolvable_annotation_fails_at_declaration() -> None:
    """The error names the handler, the parameter and the annotation."""
    broker = Broker.from_url("memory://")
    with pytest.raises(TypeError) as info:

        @broker.subscriber("orders.hidden", group="g")
        async def handle_hidden(order: Hidden) -> None:
            return None

    text = str(info.value)
    assert "handle_hidden" in text
    assert "'Hidden'" in text
    assert "'order'" in text
