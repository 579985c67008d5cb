"""Testing handlers without a server: the memory broker and a way to wait for it to settle.

::

    broker = memory_broker()            # or import your app's broker and swap its backend

    @broker.subscriber("orders", group="payments", retry=Retry(retries=2, backoff=0.01))
    async def charge(order: OrderPlaced) -> None: ...

    async with broker:
        await broker.publish("orders", OrderPlaced(...))
        await settled(broker)           # handled, retried, or dead-lettered: nothing pending
        assert await broker.dlq_list("orders") == []

The memory broker redelivers, delays, dead-letters and loses leases like the real ones, so
a test that passes on it exercises the same code path as production.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from interlink.messaging.backends.memory import MemoryBackend
from interlink.messaging.broker import Broker

__all__ = ["memory_broker", "settled"]


def memory_broker(**options: Any) -> Broker:
    """A broker on a fresh in-process hub of its own; options as ``Broker``."""
    url = f"memory://{uuid.uuid4().hex}"
    return Broker.from_url(url, **options)


async def settled(broker: Broker, within: float = 5.0) -> None:
    """Wait until every message of every group of a memory broker is finished: acked or
    dead-lettered (delayed retries are waited for). Raises ``TimeoutError`` after ``within``."""
    backend = broker.backend
    if not isinstance(backend, MemoryBackend):
        raise TypeError(f"settled() needs a memory:// broker, not {type(backend).__name__}")
    deadline = time.monotonic() + within
    while any(
        group.entries for topic in backend.hub.topics.values() for group in topic.groups.values()
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"messages still pending after {within}s")
        await asyncio.sleep(0.002)
