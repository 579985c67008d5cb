"""The contract every messaging backend keeps, written once and run against each of them.

Subclass ``BackendContract`` in ``tests/messaging/test_<backend>.py`` and implement
``make_backend_url()``: a URL that reaches the same broker every time it is opened during one
test (``memory://<unique name>``, one SQLite file per test, the shared NATS server, ...).
Topics and groups get a random suffix per test, so tests can run again and side by side on a
shared server. Delays are small (retry base 10-50 ms), so a backend's whole run stays in
seconds. Override ``make_idempotency_url()`` to run the idempotency test against another store.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel
from support import until

from interlink import Retry
from interlink.context import correlation_id, use_correlation_id
from interlink.messaging import Broker, current_message
from interlink.messaging.envelope import FIELDS, STRUCTURED, Binding, OutgoingMessage, read

T = TypeVar("T")

#: The retry used where a test needs retries but not their timing: quick, deterministic.
QUICK = Retry(retries=10, backoff=0.01, max_backoff=0.02, jitter="none")


class Order(BaseModel):
    """The payload used throughout the suite."""

    order_id: int
    item: str = "pizza"


def run_async(body: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], None]:
    """Turn an ``async def test_...(self)`` into a plain test run under ``asyncio.run`` with
    the class's ``timeout`` (no pytest plugin needed, so every subclass runs as is)."""

    def test(self: Any) -> None:
        asyncio.run(asyncio.wait_for(body(self), self.timeout))

    test.__name__ = body.__name__
    test.__qualname__ = body.__qualname__
    test.__doc__ = body.__doc__
    return test


class BackendContract:
    """The shared tests. Subclasses implement ``make_backend_url``."""

    #: Seconds one test may take before it fails.
    timeout: ClassVar[float] = 15.0
    #: How long "nothing else arrives" is watched for.
    quiet: ClassVar[float] = 0.3

    def make_backend_url(self) -> str:
        """A URL reaching the same broker each time it is opened within one test."""
        raise NotImplementedError

    def make_idempotency_url(self) -> str:
        """The idempotency store for ``test_idempotent_consumer_runs_effects_once``."""
        return "memory://"

    # -- helpers ------------------------------------------------------------------------

    def broker(self, url: str | None = None, **options: Any) -> Broker:
        """A broker on this backend (``url`` to share one broker's URL between brokers)."""
        return Broker.from_url(url or self.make_backend_url(), **options)

    @staticmethod
    def binding(broker: Broker) -> Binding:
        """How the broker's backend names the CloudEvents attributes."""
        binding = getattr(broker.backend, "binding", FIELDS)
        assert isinstance(binding, Binding)
        return binding

    @staticmethod
    def name(prefix: str = "t") -> str:
        """A topic or group name no other test uses."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    @asynccontextmanager
    async def dead_letters(self, count: int) -> AsyncIterator[tuple[Broker, str, list[str]]]:
        """A broker whose subscriber fails every message, after ``count`` messages went to
        the DLQ and its consumers stopped: (broker, topic, message ids)."""
        topic = self.name()
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=1)
        async def handle(message: Order) -> None:
            raise RuntimeError("always")

        async with broker:
            ids = await broker.publish_many(topic, [Order(order_id=i) for i in range(count)])
            await self.settle(broker, topic, count)
            await broker.stop()
            yield broker, topic, ids

    @staticmethod
    async def settle(broker: Broker, topic: str, expected: int, within: float = 5.0) -> None:
        """Wait until ``topic.dlq`` holds ``expected`` dead letters."""
        deadline = time.monotonic() + within
        while len(await broker.dlq_list(topic, 1000)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}.dlq never held {expected} dead letters")
            await asyncio.sleep(0.01)

    # -- publish and consume ------------------------------------------------------------

    @run_async
    async def test_publish_consume_roundtrip(self) -> None:
        """A published model arrives as an equal model with its key, id and time."""
        topic = self.name()
        got: list[tuple[Order, str | None, str, float]] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"))
        async def handle(message: Order) -> None:
            info = current_message()
            got.append((message, info.envelope.key, info.envelope.id, info.envelope.time))

        async with broker:
            before = time.time()
            mid = await broker.publish(topic, Order(order_id=1, item="soup"), key="k1")
            await until(lambda: len(got) == 1)
        assert got == [(Order(order_id=1, item="soup"), "k1", mid, got[0][3])]
        assert before - 1 <= got[0][3] <= time.time() + 1

    @run_async
    async def test_bytes_payload_roundtrip(self) -> None:
        """Bytes are delivered as the same bytes to a handler annotated with ``bytes``."""
        topic = self.name()
        got: list[bytes] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"))
        async def handle(message: bytes) -> None:
            got.append(message)

        async with broker:
            await broker.publish(topic, b"\x00raw\xff" * 100)
            await until(lambda: len(got) == 1)
        assert got == [b"\x00raw\xff" * 100]

    @run_async
    async def test_publish_many_delivers_every_message(self) -> None:
        """A confirmed batch is delivered completely, each message once."""
        topic = self.name()
        got: list[int] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), concurrency=8)
        async def handle(message: Order) -> None:
            got.append(message.order_id)

        async with broker:
            ids = await broker.publish_many(topic, [Order(order_id=i) for i in range(300)])
            await until(lambda: len(got) >= 300)
            await asyncio.sleep(self.quiet)
        assert len(set(ids)) == 300
        assert sorted(got) == list(range(300))

    @run_async
    async def test_correlation_id_flows_to_handler(self) -> None:
        """The publisher's correlation id is the handler's correlation id."""
        topic = self.name()
        seen: list[str | None] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"))
        async def handle(message: Order) -> None:
            seen.append(correlation_id())

        async with broker:
            with use_correlation_id("req-42"):
                await broker.publish(topic, Order(order_id=1))
            await until(lambda: len(seen) == 1)
        assert seen == ["req-42"]
        assert correlation_id() is None

    @run_async
    async def test_acked_message_is_not_delivered_again(self) -> None:
        """After a successful handler, a restarted consumer of the group gets nothing more."""
        url = self.make_backend_url()
        topic, group = self.name(), self.name("g")
        calls: list[int] = []

        def consumer() -> Broker:
            broker = self.broker(url)

            @broker.subscriber(topic, group=group)
            async def handle(message: Order) -> None:
                calls.append(message.order_id)

            return broker

        async with consumer() as first:
            await first.publish(topic, Order(order_id=7))
            await until(lambda: calls == [7])
        async with consumer():
            await asyncio.sleep(self.quiet * 2)
        assert calls == [7]

    @run_async
    async def test_every_group_gets_every_message(self) -> None:
        """Two groups on one topic each receive every message."""
        topic = self.name()
        got: dict[str, list[int]] = {"a": [], "b": []}
        broker = self.broker()

        def make(sink: list[int]) -> Callable[[Order], Awaitable[None]]:
            async def handle(message: Order) -> None:
                sink.append(message.order_id)

            return handle

        for name, sink in got.items():
            broker.subscriber(topic, group=self.name(name))(make(sink))
        async with broker:
            await broker.publish_many(topic, [Order(order_id=i) for i in range(20)])
            await until(lambda: len(got["a"]) == 20 and len(got["b"]) == 20)
        assert sorted(got["a"]) == sorted(got["b"]) == list(range(20))

    @run_async
    async def test_competing_consumers_share_the_work(self) -> None:
        """Consumers of one group split the messages: each is handled once, both get some."""
        url = self.make_backend_url()
        topic, group = self.name(), self.name("g")
        got: dict[int, list[int]] = {0: [], 1: []}

        def consumer(n: int) -> Broker:
            broker = self.broker(url)

            @broker.subscriber(topic, group=group, prefetch=1)
            async def handle(message: Order) -> None:
                got[n].append(message.order_id)
                await asyncio.sleep(0.01)

            return broker

        async with consumer(0) as first, consumer(1):
            await first.publish_many(topic, [Order(order_id=i) for i in range(40)])
            await until(lambda: len(got[0]) + len(got[1]) >= 40, within=10)
            await asyncio.sleep(self.quiet)
        assert sorted(got[0] + got[1]) == list(range(40))
        assert got[0]
        assert got[1]

    @run_async
    async def test_ordering_per_key(self) -> None:
        """Messages with one key are handled in publish order, even with concurrency."""
        topic = self.name()
        seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), concurrency=4)
        async def handle(message: Order) -> None:
            await asyncio.sleep(0.001 * (message.order_id % 3))
            seen[message.item].append(message.order_id)

        messages = [Order(order_id=i, item="abc"[i % 3]) for i in range(60)]
        async with broker:
            await broker.publish_many(topic, messages, key=lambda m: m.item)
            await until(lambda: sum(map(len, seen.values())) == 60)
        for key, ids in seen.items():
            assert ids == sorted(ids), key

    # -- failures -----------------------------------------------------------------------

    @run_async
    async def test_retry_waits_the_backoff(self) -> None:
        """A failing handler is redelivered after the Retry policy's delays, then acked."""
        topic = self.name()
        times: list[tuple[int, float]] = []
        broker = self.broker()
        retry = Retry(retries=5, backoff=0.1, multiplier=2.0, max_backoff=1.0, jitter="none")

        @broker.subscriber(topic, group=self.name("g"), retry=retry, max_deliveries=5)
        async def handle(message: Order) -> None:
            times.append((current_message().attempt, time.monotonic()))
            if len(times) < 3:
                raise RuntimeError("downstream busy")

        async with broker:
            await broker.publish(topic, Order(order_id=1))
            await until(lambda: len(times) == 3)
            await asyncio.sleep(self.quiet)
            letters = await broker.dlq_list(topic, 10)  # inside: the broker is still connected
        assert [attempt for attempt, _ in times] == [1, 2, 3]
        first_gap = times[1][1] - times[0][1]
        second_gap = times[2][1] - times[1][1]
        assert 0.09 <= first_gap < 0.1 + 1.0
        assert 0.19 <= second_gap < 0.2 + 1.0
        assert letters == []

    @run_async
    async def test_dead_letter_after_max_deliveries(self) -> None:
        """A handler that always fails is tried max_deliveries times, then dead-lettered with
        the original bytes, the error and the times."""
        topic = self.name()
        attempts: list[int] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=3)
        async def handle(message: Order) -> None:
            attempts.append(current_message().attempt)
            raise ValueError("card declined")

        async with broker:
            before = time.time()
            mid = await broker.publish(topic, Order(order_id=9), key="k9")
            await self.settle(broker, topic, 1)
            await asyncio.sleep(self.quiet)
            [letter] = await broker.dlq_list(topic, 10)
        assert attempts == [1, 2, 3]
        assert letter.id == mid
        assert letter.topic == topic
        assert letter.attempts == 3
        assert letter.error_type == "ValueError"
        assert "card declined" in letter.reason
        assert letter.published_at is not None
        assert before - 1 <= letter.published_at <= letter.dead_at <= time.time() + 1
        assert Order.model_validate_json(letter.data) == Order(order_id=9)  # the body as sent
        envelope = read(self.binding(broker), letter.data, letter.headers, fallback_id="")
        assert (envelope.id, envelope.type, envelope.key) == (mid, "Order", "k9")

    @run_async
    async def test_poison_messages_go_to_dlq_at_once(self) -> None:
        """Unreadable headers and invalid payloads are dead-lettered on the first delivery,
        body kept, and the consumer keeps handling the messages behind them."""
        url = self.make_backend_url()
        topic = self.name()
        good: list[int] = []
        broker = self.broker(url)

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=5)
        async def handle(message: Order) -> None:
            good.append(message.order_id)

        async with broker:
            backend = broker.backend
            binding = self.binding(broker)
            bad_time = {binding.spec: "1.0", binding.id: "bad2", binding.time: "yesterday"}
            await backend.publish(topic, OutgoingMessage(b"not json", None, {}, "raw1"))
            await backend.publish(
                topic, OutgoingMessage(b'{"order_id": 1}', None, bad_time, "bad2")
            )
            await broker.publish(topic, Order(order_id=3))
            await until(lambda: good == [3])
            await self.settle(broker, topic, 2)
            letters = await broker.dlq_list(topic, 10)
        assert sorted(letter.attempts for letter in letters) == [1, 1]
        assert {letter.data for letter in letters} == {b"not json", b'{"order_id": 1}'}
        types = {letter.error_type for letter in letters}
        assert "interlink.messaging.envelope.EnvelopeError" in types
        assert "pydantic_core._pydantic_core.ValidationError" in types

    @run_async
    async def test_bare_and_structured_payloads_are_consumed(self) -> None:
        """A bare JSON payload (no CloudEvents headers: id from the broker, type from the
        model) and a structured-mode CloudEvent both reach a typed handler."""
        topic = self.name()
        seen: list[tuple[int, str, str]] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK)
        async def handle(message: Order) -> None:
            envelope = current_message().envelope
            seen.append((message.order_id, envelope.id, envelope.type))

        async with broker:
            backend = broker.backend
            binding = self.binding(broker)
            await backend.publish(topic, OutgoingMessage(b'{"order_id": 1}', None, {}, "bare1"))
            event = {
                "specversion": "1.0",
                "id": "structured-2",
                "source": "/elsewhere",
                "type": "com.example.order",
                "datacontenttype": "application/json",
                "data": {"order_id": 2},
            }
            structured = {binding.content_type or "content-type": STRUCTURED}
            await backend.publish(
                topic, OutgoingMessage(json.dumps(event).encode(), None, structured, "s2")
            )
            await until(lambda: len(seen) == 2)
        bare, structured = sorted(seen)
        assert bare[0] == 1
        assert bare[1]
        assert bare[2] == "Order"
        assert structured == (2, "structured-2", "com.example.order")

    @run_async
    async def test_not_retryable_error_is_dead_lettered_at_once(self) -> None:
        """An error the Retry policy does not retry goes to the DLQ on its first delivery."""
        topic = self.name()
        attempts: list[int] = []
        broker = self.broker()
        retry = Retry(retries=5, backoff=0.01, retry_on=ConnectionError)

        @broker.subscriber(topic, group=self.name("g"), retry=retry, max_deliveries=5)
        async def handle(message: Order) -> None:
            attempts.append(current_message().attempt)
            raise KeyError("no such customer")

        async with broker:
            await broker.publish(topic, Order(order_id=1))
            await self.settle(broker, topic, 1)
        assert attempts == [1]

    @run_async
    async def test_replay_republishes_with_same_id_and_is_safe_twice(self) -> None:
        """Replay sends the dead letter back to its topic with its id; a second replay and
        the emptied DLQ show nothing is published twice."""
        topic = self.name()
        broken = True
        seen: list[tuple[str, int]] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=2)
        async def handle(message: Order) -> None:
            if broken:
                raise RuntimeError("bug")
            seen.append((current_message().envelope.id, current_message().attempt))

        async with broker:
            mid = await broker.publish(topic, Order(order_id=5))
            await self.settle(broker, topic, 1)
            broken = False
            assert await broker.dlq_replay(topic) == 1
            assert await broker.dlq_replay(topic) == 0
            await until(lambda: len(seen) == 1)
            await asyncio.sleep(self.quiet)
            assert await broker.dlq_list(topic, 10) == []
        assert seen == [(mid, 1)]

    @run_async
    async def test_the_same_id_published_twice_is_delivered_twice_and_replayed_once(
        self,
    ) -> None:
        """No backend drops a re-published id (the idempotent consumer is where duplicates
        end); two dead letters with one id are replayed as one message and both leave."""
        topic = self.name()
        seen: list[str] = []
        broker = self.broker()
        broken = True

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=1)
        async def handle(message: Order) -> None:
            seen.append(current_message().envelope.id)
            if broken:
                raise RuntimeError("down")

        async with broker:
            await broker.publish(topic, Order(order_id=1), message_id="same-1")
            await broker.publish(topic, Order(order_id=1), message_id="same-1")
            await self.settle(broker, topic, 2)
            assert await broker.dlq_count(topic) == 2
            broken = False
            assert await broker.dlq_replay(topic, ["same-1"]) == 1
            await until(lambda: len(seen) == 3)
            await asyncio.sleep(self.quiet)
            assert await broker.dlq_count(topic) == 0
        assert seen == ["same-1"] * 3

    @run_async
    async def test_the_dlq_keeps_at_most_dlq_max_count_letters(self) -> None:
        """The DLQ's retention by count (URL option ``dlq_max_count``): the newest stay."""
        url = self.make_backend_url()
        url += ("&" if "?" in url else "?") + "dlq_max_count=2"
        topic = self.name()
        broker = self.broker(url)

        @broker.subscriber(topic, group=self.name("g"), retry=QUICK, max_deliveries=1)
        async def handle(message: Order) -> None:
            raise RuntimeError("no")

        async with broker:
            ids = [await broker.publish(topic, Order(order_id=i)) for i in range(3)]
            for _ in range(500):
                letters = await broker.dlq_list(topic, 10)
                if letters and letters[-1].id == ids[-1]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(self.quiet)
            assert await broker.dlq_count(topic) == 2
            assert [letter.id for letter in await broker.dlq_list(topic, 10)] == ids[1:]

    @run_async
    async def test_dlq_list_gives_at_most_limit_letters(self) -> None:
        """``dlq_list`` stops at ``limit`` (none for 0) and leaves every letter in the DLQ."""
        async with self.dead_letters(3) as (broker, topic, ids):
            assert await broker.dlq_list(topic, 0) == []
            letters = await broker.dlq_list(topic, 2)
            assert len(letters) == 2
            assert {letter.id for letter in letters} <= set(ids)
            assert await broker.dlq_count(topic) == 3

    @run_async
    async def test_replay_selects_by_id_and_purge_empties(self) -> None:
        """Replay of chosen ids leaves the other dead letters; purge removes them."""
        async with self.dead_letters(3) as (broker, topic, ids):
            assert await broker.dlq_replay(topic, [ids[1]]) == 1
            left = {letter.id for letter in await broker.dlq_list(topic, 10)}
            assert left == {ids[0], ids[2]}
            assert await broker.dlq_purge(topic) == 2
            assert await broker.dlq_list(topic, 10) == []

    @run_async
    async def test_topics_lists_topic_and_dlq(self) -> None:
        """``topics`` shows a used topic and, once something died, its DLQ."""
        topic = self.name()
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), max_deliveries=1)
        async def handle(message: Order) -> None:
            raise RuntimeError("always")

        async with broker:
            await broker.publish(topic, Order(order_id=1))
            await self.settle(broker, topic, 1)
            names = await broker.topics()
        assert topic in names
        assert f"{topic}.dlq" in names

    @run_async
    async def test_idempotent_consumer_runs_effects_once(self) -> None:
        """A message delivered twice (same id) runs its handler once with idempotency on."""
        topic = self.name()
        effects: list[int] = []
        broker = self.broker()

        @broker.subscriber(topic, group=self.name("g"), idempotent=self.make_idempotency_url())
        async def handle(message: Order) -> None:
            effects.append(message.order_id)

        async with broker:
            await broker.publish(topic, Order(order_id=1), message_id="dup-" + topic)
            await broker.publish(topic, Order(order_id=1), message_id="dup-" + topic)
            await broker.publish(topic, Order(order_id=2))
            await until(lambda: 2 in effects)
            await asyncio.sleep(self.quiet)
        assert sorted(effects) == [1, 2]

    # -- shutdown -----------------------------------------------------------------------

    @run_async
    async def test_graceful_shutdown_finishes_in_flight_and_loses_nothing(self) -> None:
        """Stopping mid-stream finishes the running handlers (acked, never seen again) and
        leaves the rest for the next consumer: every message handled, none twice."""
        url = self.make_backend_url()
        topic, group = self.name(), self.name("g")
        done: list[int] = []
        started = asyncio.Event()

        def consumer() -> Broker:
            broker = self.broker(url, grace=5.0)

            @broker.subscriber(topic, group=group, concurrency=2)
            async def handle(message: Order) -> None:
                started.set()
                await asyncio.sleep(0.02)
                done.append(message.order_id)

            return broker

        first = consumer()
        await first.start()
        await first.publish_many(topic, [Order(order_id=i) for i in range(30)])
        await started.wait()
        await first.stop()
        handled_first = list(done)
        assert handled_first
        async with consumer():
            await until(lambda: len(set(done)) == 30, within=10)
            await asyncio.sleep(self.quiet)
        assert sorted(done) == list(range(30))

    @run_async
    async def test_handler_past_grace_is_redelivered(self) -> None:
        """A handler still running when the grace period ends is cancelled and its message
        comes back (nothing is lost when the process must go)."""
        url = self.make_backend_url()
        topic, group = self.name(), self.name("g")
        calls: list[int] = []
        release = asyncio.Event()

        def consumer(grace: float) -> Broker:
            broker = self.broker(url, grace=grace)

            @broker.subscriber(topic, group=group)
            async def handle(message: Order) -> None:
                calls.append(current_message().attempt)
                if len(calls) == 1:
                    await release.wait()

            return broker

        first = consumer(0.05)
        await first.start()
        await first.publish(topic, Order(order_id=1))
        await until(lambda: len(calls) == 1)
        await first.stop()
        async with consumer(5.0):
            await until(lambda: len(calls) == 2, within=10)
        assert calls[0] == 1
        assert calls[1] >= 1


async def check_key_order_survives_retries(broker: Broker) -> None:
    """For backends with strict per-key FIFO (memory, SQLite): a failing message holds back
    the later messages of its key until it succeeds, while other keys go on."""
    topic = BackendContract.name()
    seen: list[tuple[str, int]] = []
    failed: set[int] = set()

    @broker.subscriber(topic, group="fifo", retry=QUICK, concurrency=4)
    async def handle(message: Order) -> None:
        if message.order_id == 0 and 0 not in failed:
            failed.add(0)
            raise RuntimeError("first try fails")
        seen.append((message.item, message.order_id))

    async with broker:
        await broker.publish_many(
            topic,
            [Order(order_id=0, item="a"), Order(order_id=1, item="a"), Order(order_id=2, item="b")],
            key=lambda m: m.item,
        )
        await until(lambda: len(seen) == 3)
    assert [i for k, i in seen if k == "a"] == [0, 1]
