"""Consumer lag: each backend's own figures, read by ``Broker.lag``/``lags`` and exported by
``SystemMetrics`` as ``interlink_consumer_lag_messages`` and ``interlink_consumer_lag_seconds``."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from interlink.messaging import Broker, ConsumerLag
from interlink.metrics import SystemMetrics

NATS = "nats://127.0.0.1:4222"


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def _held_back(url: str, count: int) -> tuple[ConsumerLag, ConsumerLag, ConsumerLag]:
    """``count`` messages published while the group's handler is held: the lag then, as a
    broker with no subscription of its own sees it, and once the handler is let go."""
    topic = f"lag.t{uuid.uuid4().hex[:8]}"
    broker = Broker.from_url(url)
    gate = asyncio.Event()
    handled: list[bytes] = []

    @broker.subscriber(topic, group="payment", concurrency=1, prefetch=1)
    async def handle(payload: bytes) -> None:
        await gate.wait()
        handled.append(payload)

    async with broker:
        published = time.time()
        for i in range(count):
            await broker.publish(topic, str(i).encode())
        await asyncio.sleep(0.3)
        held = await broker.lag(topic, "payment")
        monitor = Broker.from_url(url)
        async with monitor:
            seen = [lag for lag in await monitor.lags() if lag.topic == topic]
        assert held is not None
        assert held.oldest_age is not None
        assert held.oldest_age <= time.time() - published + 0.5
        gate.set()
        for _ in range(200):
            if len(handled) == count:
                break
            await asyncio.sleep(0.05)
        drained = await broker.lag(topic, "payment")
    assert drained is not None
    (listed,) = seen
    return held, listed, drained


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
def test_lag_counts_the_messages_a_group_has_not_acknowledged(backend: str, tmp_path: Path) -> None:
    """Five messages held back: five pending, the oldest about as old as the wait; a broker
    with no subscriptions lists the group too; once handled, nothing is pending."""
    url = NATS if backend == "nats" else f"sqlite:///{tmp_path}/events.db?poll=0.02"
    held, listed, drained = asyncio.run(_held_back(url, 5))
    assert (held.group, held.pending) == ("payment", 5)
    assert held.oldest_age is not None
    assert held.oldest_age >= 0.2
    assert (listed.group, listed.pending) == ("payment", 5)
    assert (drained.pending, drained.oldest_age) == (0, None)


def test_lag_of_an_unknown_group_is_zero(tmp_path: Path) -> None:
    """A group that never subscribed has nothing waiting (not an error)."""

    async def scenario() -> ConsumerLag | None:
        async with Broker.from_url(f"sqlite:///{tmp_path}/events.db") as broker:
            await broker.publish("orders", b"1")
            return await broker.lag("orders", "nobody")

    assert asyncio.run(scenario()) == ConsumerLag(topic="orders", group="nobody", pending=0)


def test_system_metrics_export_consumer_lag(tmp_path: Path) -> None:
    """A held-back subscription shows in both gauges, labelled by topic and group."""

    async def scenario() -> CollectorRegistry:
        broker = Broker.from_url(f"sqlite:///{tmp_path}/events.db?poll=0.02")
        gate = asyncio.Event()

        @broker.subscriber("orders.placed", group="payment", concurrency=1, prefetch=1)
        async def handle(payload: bytes) -> None:
            await gate.wait()

        registry = CollectorRegistry()
        async with broker:
            for i in range(3):
                await broker.publish("orders.placed", str(i).encode())
            await asyncio.sleep(0.2)
            await SystemMetrics(registry, brokers=[broker]).refresh()
            gate.set()
        return registry

    registry = asyncio.run(scenario())
    labels = {"topic": "orders.placed", "group": "payment"}
    assert _value(registry, "interlink_consumer_lag_messages", **labels) == 3
    seconds = _value(registry, "interlink_consumer_lag_seconds", **labels)
    assert seconds is not None
    assert 0.1 <= seconds < 30
