"""The consumer's runners (no task per message), on the in-process backend: isolation,
concurrency when handlers wait, cancellation, fairness, and the ids publishing makes."""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import time
import uuid
from typing import Any

import pytest
from support import until

from interlink import Retry
from interlink.messaging import Broker, current_message
from interlink.messaging.consumer import Consumer, Subscription
from interlink.messaging.envelope import Envelope

from .contract import QUICK

VAR: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_consumer_var", default=None)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def memory(**options: Any) -> Broker:
    return Broker.from_url(f"memory://{uuid.uuid4().hex}", **options)


def test_what_a_handler_sets_in_a_context_variable_stays_with_its_message() -> None:
    """Each message runs in a context of its own, like a task: the next one does not see it."""
    broker = memory()
    seen: list[str | None] = []

    @broker.subscriber("t")
    async def handle(message: bytes) -> None:
        seen.append(VAR.get())
        VAR.set(message.decode())

    async def body() -> None:
        async with broker:
            await broker.publish_many("t", [b"a", b"b", b"c"])
            await until(lambda: len(seen) == 3)

    run(body())
    assert seen == [None, None, None]


def test_waiting_handlers_overlap_up_to_concurrency() -> None:
    """Handlers that wait run side by side, `concurrency` of them at once, never more."""
    broker = memory()
    running, peak, finished = [0], [0], []
    release = asyncio.Event()

    @broker.subscriber("t", concurrency=3)
    async def handle(message: bytes) -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await release.wait()
        running[0] -= 1
        finished.append(message)

    async def body() -> None:
        async with broker:
            await broker.publish_many("t", [b"%d" % i for i in range(9)])
            await until(lambda: running[0] == 3)
            await asyncio.sleep(0.05)
            assert running[0] == 3
            release.set()
            await until(lambda: len(finished) == 9)

    run(body())
    assert peak == [3]


def test_fast_handlers_do_not_starve_other_tasks() -> None:
    """A backlog of handlers that never wait still lets the rest of the program run."""
    broker = memory()
    handled: list[int] = []
    ticks: list[int] = []

    @broker.subscriber("t", concurrency=4, prefetch=1000)
    async def handle(message: bytes) -> None:
        spin_until = time.perf_counter() + 20e-6  # some work, done without waiting
        while time.perf_counter() < spin_until:
            pass
        handled.append(len(ticks))

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    async def body() -> None:
        await broker.publish_many("t", [b"x"] * 3000)
        task = asyncio.create_task(ticker())
        async with broker:
            await until(lambda: len(handled) == 3000)
        task.cancel()

    run(body())
    assert handled[-1] > handled[0]  # the ticker ran while the backlog was handled


def test_a_handlers_own_cancellation_retries_and_the_consumer_goes_on() -> None:
    """A CancelledError from inside a handler (not a stop) sends the message back; the
    consumer keeps handling messages."""
    broker = memory()
    attempts: list[tuple[bytes, int]] = []

    @broker.subscriber("t", retry=QUICK)
    async def handle(message: bytes) -> None:
        attempts.append((message, current_message().attempt))
        if message == b"a" and current_message().attempt == 1:
            raise asyncio.CancelledError

    async def body() -> None:
        async with broker:
            await broker.publish("t", b"a")
            await broker.publish("t", b"b")
            await until(lambda: (b"a", 2) in attempts and (b"b", 1) in attempts)

    run(body())


def test_timeouts_inside_handlers_time_out_only_the_handler() -> None:
    """asyncio.timeout() in a handler raises TimeoutError there (retried like any error)."""
    broker = memory()
    outcomes: list[str] = []

    @broker.subscriber("t", retry=Retry(retries=3, backoff=0.01, jitter="none"))
    async def handle(message: bytes) -> None:
        if current_message().attempt == 1:
            async with asyncio.timeout(0.01):
                await asyncio.Event().wait()
        outcomes.append(f"done at {current_message().attempt}")

    async def body() -> None:
        async with broker:
            await broker.publish("t", b"x")
            await until(lambda: bool(outcomes))

    run(body())
    assert outcomes == ["done at 2"]


def test_stop_past_the_grace_cancels_waiting_handlers_and_hands_messages_back() -> None:
    """Handlers still waiting when the grace period ends are cancelled; their messages come
    back to the next consumer as another delivery."""
    url = f"memory://{uuid.uuid4().hex}"
    first, second = Broker.from_url(url, grace=0.05), Broker.from_url(url)
    cancelled: list[bytes] = []
    again: list[tuple[bytes, int]] = []

    @first.subscriber("t", concurrency=2)
    async def stuck(message: bytes) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(message)
            raise

    @second.subscriber("t", concurrency=2)
    async def handle(message: bytes) -> None:
        again.append((message, current_message().attempt))

    async def body() -> None:
        await first.start()
        await first.publish_many("t", [b"1", b"2"])
        await until(lambda: len(first.backend.hub.topics["t"].groups) == 1)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        await first.stop()
        async with second:
            await until(lambda: len(again) == 2)

    run(body())
    assert sorted(cancelled) == [b"1", b"2"]
    assert sorted(again) == [(b"1", 2), (b"2", 2)]


def test_published_ids_are_distinct_hex() -> None:
    """Message ids are 32 lowercase hex characters, distinct within and across batches."""
    broker = memory()

    async def body() -> list[str]:
        ids = await broker.publish_many("t", [b"x"] * 500)
        ids += await broker.publish_many("t", [b"y"] * 500)
        ids.append(await broker.publish("t", b"z"))
        return ids

    ids = run(body())
    assert len(set(ids)) == len(ids) == 1001
    assert all(re.fullmatch(r"[0-9a-f]{32}", mid) for mid in ids)


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork.*:DeprecationWarning")
def test_a_forked_child_draws_its_own_ids() -> None:
    """Ids drawn ahead by the parent are not handed out again by a forked child."""
    from interlink.messaging._ids import new_id

    new_id()  # the parent now holds ids drawn ahead
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, leave at once
        os.write(writer, new_id().encode())
        os._exit(0)
    os.close(writer)
    child = os.read(reader, 64).decode()
    os.close(reader)
    os.waitpid(pid, 0)
    parents = {new_id() for _ in range(64)}
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child not in parents


class _Taken:
    """A delivery that records its ack."""

    def __init__(self, n: int, acked: list[int]) -> None:
        self.envelope = Envelope(id=f"m{n}", type="bytes", payload=str(n).encode())
        self.raw, self.headers, self.attempt = self.envelope.payload, {}, 1
        self._n, self._acked = n, acked

    async def ack(self) -> None:
        self._acked.append(self._n)

    async def nack(self, delay: float) -> None:
        raise AssertionError("not retried")

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        raise AssertionError("not dead-lettered")


class _Fetched:
    """A subscription holding one fetched batch: ``ready()`` hands it out without waiting,
    ``__anext__`` (counted) is the fetch."""

    def __init__(self, batch: list[_Taken]) -> None:
        self.batch, self.fetches = batch, 0

    def __aiter__(self) -> _Fetched:
        return self

    def ready(self) -> _Taken | None:
        return self.batch.pop(0) if self.batch else None

    async def __anext__(self) -> _Taken:
        self.fetches += 1
        if self.batch:
            return self.batch.pop(0)
        await asyncio.Event().wait()  # nothing more: the consumer cancels this at stop
        raise StopAsyncIteration


def test_a_fetched_batch_is_taken_through_ready_without_a_fetch_each() -> None:
    """A subscription with ``ready()`` is asked for the next delivery first; only when it
    holds none does the consumer await the next fetch."""
    acked: list[int] = []
    fetched = _Fetched([_Taken(n, acked) for n in range(50)])
    seen: list[bytes] = []

    class _Backend:
        def subscribe(self, topic: str, group: str, *, prefetch: int) -> _Fetched:
            return fetched

    async def handle(message: bytes) -> None:
        seen.append(message)

    subscription = Subscription(
        topic="t",
        group="g",
        handler=handle,
        decode=lambda envelope: envelope.payload,
        message_type=bytes,
        retry=Retry(),
        max_deliveries=3,
        concurrency=4,
        prefetch=50,
        idempotency=None,
    )

    async def body() -> None:
        consumer = Consumer(_Backend(), subscription)  # type: ignore[arg-type]
        await consumer.start()
        await until(lambda: len(acked) == 50)
        await consumer.stop(1.0)

    run(body())
    assert seen == [str(n).encode() for n in range(50)]
    assert fetched.fetches <= 2  # the first delivery, then the wait for more
