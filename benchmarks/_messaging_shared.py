"""What every messaging contender shares: the local servers, the payloads (1 KiB of bytes or a
pydantic ``Order``), the batch sizes and time limit, and the ``Counter`` consumers report to.

Its own module so the raw clients, FastStream and interlink, each in theirs, measure against
the same constants and payloads; ``messaging.py`` runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

NATS = "nats://127.0.0.1:4222"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
REDIS = "redis://127.0.0.1:6379/0"
BYTES = b"x" * 1024
# interlink's consumers read up to PREFETCH messages ahead; the raw clients and FastStream fetch
# (or are prefetched) BATCH at a time: the same number, so no contender reads in bigger batches
CONCURRENCY, PREFETCH = 16, 256
BATCH = PREFETCH
TIME_LIMIT = 1.0  # seconds a measurement may run (slow contenders do fewer messages)


class Item(BaseModel):
    sku: str
    quantity: int
    price: float


class Order(BaseModel):
    order_id: int
    customer: str
    items: list[Item]
    note: str


ORDER = Order(
    order_id=42,
    customer="customer-" + "c" * 40,
    items=[Item(sku=f"sku-{i:04d}-" + "s" * 20, quantity=i, price=9.99 + i) for i in range(12)],
    note="n" * 200,
)


async def timed_publish(
    n: int, send: Callable[[], Awaitable[Any]], per_send: int = 1
) -> tuple[int, float]:
    """Await ``send()`` (``per_send`` messages each) until ``n`` messages went out or
    ``TIME_LIMIT`` passed; the messages sent and the seconds it took."""
    began, done = time.perf_counter(), 0
    while done < n and time.perf_counter() - began < TIME_LIMIT:
        await send()
        done += per_send
    return done, time.perf_counter() - began


def unique(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:10]}"


class Counter:
    """Counts handled messages; ``wait`` returns once ``target`` were (or time is up)."""

    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.reached = asyncio.Event()

    def hit(self) -> None:
        self.n += 1
        if self.n >= self.target:
            self.reached.set()

    async def wait(self, began: float) -> tuple[int, float]:
        left = began + TIME_LIMIT * 3 - time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reached.wait(), max(left, 0.001))
        return self.n, time.perf_counter() - began


def _payload(pydantic: bool) -> Any:
    return ORDER if pydantic else BYTES


def _raw_bytes(pydantic: bool) -> bytes:
    return ORDER.model_dump_json().encode() if pydantic else BYTES
