"""The broker and the consumer loop, on the in-process backend."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from support import until

from interlink import Retry
from interlink.context import correlation_id, valid_correlation_id
from interlink.messaging import Broker, Envelope, current_message
from interlink.messaging.backends.memory import MemoryBackend
from interlink.messaging.broker import DEFAULT_GRACE, DEFAULT_MAX_DELIVERIES, DEFAULT_PREFETCH

from .contract import QUICK, Order, check_key_order_survives_retries


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def memory(**options: Any) -> Broker:
    return Broker.from_url(f"memory://{uuid.uuid4().hex}", **options)


def test_defaults_are_pinned() -> None:
    """The documented defaults: 10 s grace, 5 deliveries, prefetch 32, group "default"."""
    assert (DEFAULT_GRACE, DEFAULT_MAX_DELIVERIES, DEFAULT_PREFETCH) == (10.0, 5, 32)
    broker = memory()

    @broker.subscriber("orders")
    async def handle(message: bytes) -> None: ...

    [sub] = broker.subscriptions
    assert (sub.group, sub.max_deliveries, sub.concurrency, sub.prefetch) == ("default", 5, 1, 32)
    described = sub.retry.describe()
    assert (described["retries"], described["backoff"], described["jitter"]) == (4, 1.0, "equal")
    assert described["max_backoff"] == 300.0


def test_unknown_scheme_is_refused() -> None:
    """A URL with an unknown scheme names the schemes that exist."""
    with pytest.raises(ValueError, match=r"'url' must start with one of amqp://, .*: 'pulsar://x'"):
        Broker.from_url("pulsar://x")


def test_password_is_not_echoed() -> None:
    """An error about a URL hides its password."""
    with pytest.raises(ValueError, match=r"pulsar://u:\*\*\*@host"):
        Broker.from_url("pulsar://u:secret@host")


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "'topic' must be dot-separated words"),
        ("a..b", "'topic' must be dot-separated words"),
        ("with space", "'topic' must be dot-separated words"),
        ("orders.dlq", "'topic' must not end with '.dlq'"),
    ],
)
def test_bad_topic_names_are_refused(topic: str, message: str) -> None:
    """Topics that some broker could not carry are refused up front."""
    with pytest.raises(ValueError, match=message):
        memory().subscriber(topic)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group": "a.b"}, r"'group' must be 1-100 characters of \[A-Za-z0-9_-\]: 'a.b'"),
        ({"max_deliveries": 0}, "'max_deliveries' must be an integer >= 1: 0"),
        ({"concurrency": 0}, "'concurrency' must be an integer >= 1: 0"),
        ({"prefetch": 0}, "'prefetch' must be an integer >= 1: 0"),
        ({"idempotent": "mongodb://x"}, "'idempotent' must be True or a store URL"),
    ],
)
def test_bad_subscriber_options_are_refused(options: dict[str, Any], message: str) -> None:
    """Each bad option is named with its value."""
    with pytest.raises(ValueError, match=message):
        memory().subscriber("orders", **options)


def test_handler_must_be_async_and_take_the_message() -> None:
    """A plain def, or a handler with no parameter, is refused at registration."""

    def sync(message: bytes) -> None: ...

    async def nothing() -> None: ...

    with pytest.raises(ValueError, match="'handler' must be an async def"):
        memory().subscriber("t")(sync)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="'handler' must take the message"):
        memory().subscriber("t")(nothing)


def test_idempotent_true_needs_a_store_on_brokers_without_one() -> None:
    """`idempotent=True` on a backend with no database of its own asks for a store URL."""

    class Elsewhere(MemoryBackend):
        scheme: ClassVar[str] = "nats"

    with pytest.raises(ValueError, match="'idempotent' must be a store URL for the nats"):
        Broker(Elsewhere()).subscriber("t", idempotent=True)
    assert callable(Broker(Elsewhere(), idempotency="memory://").subscriber("t", idempotent=True))


def test_negative_grace_is_refused() -> None:
    """The grace period is a number of seconds >= 0."""
    with pytest.raises(ValueError, match="'grace' must be a finite number >= 0: -1"):
        memory(grace=-1)


class Point(BaseModel):
    x: int


def test_handlers_get_the_type_they_ask_for() -> None:
    """The first parameter's annotation picks the decoding: model, bytes, str, Envelope,
    or any type pydantic validates."""
    broker = memory()
    got: dict[str, Any] = {}

    @broker.subscriber("t", group="model")
    async def model(message: Point) -> None:
        got["model"] = message

    @broker.subscriber("t", group="raw")
    async def raw(message) -> None:  # type: ignore[no-untyped-def]
        got["raw"] = message

    @broker.subscriber("t", group="text")
    async def text(message: str) -> None:
        got["text"] = message

    @broker.subscriber("t", group="envelope")
    async def envelope(message: Envelope) -> None:
        got["envelope"] = message.type

    @broker.subscriber("t", group="mapping")
    async def mapping(message: dict[str, int]) -> None:
        got["mapping"] = message

    async def body() -> None:
        async with broker:
            await broker.publish("t", Point(x=3))
            await until(lambda: len(got) == 5)

    run(body())
    assert got == {
        "model": Point(x=3),
        "raw": b'{"x":3}',
        "text": '{"x":3}',
        "envelope": "Point",
        "mapping": {"x": 3},
    }


def test_publish_encodes_str_and_json_values() -> None:
    """str is sent as UTF-8, other values as JSON; the envelope names their type."""
    broker = memory()
    got: list[tuple[str, bytes]] = []

    @broker.subscriber("t")
    async def handle(message: Envelope) -> None:
        got.append((message.type, message.payload))

    async def body() -> None:
        async with broker:
            await broker.publish("t", "héllo")
            await broker.publish("t", {"a": [1, 2]})
            await until(lambda: len(got) == 2)

    run(body())
    assert got == [("str", "héllo".encode()), ("dict", b'{"a":[1,2]}')]


def test_headers_and_message_id_are_delivered() -> None:
    """User headers and an explicit message id reach the handler."""
    broker = memory()
    got: list[Envelope] = []

    @broker.subscriber("t")
    async def handle(message: bytes) -> None:
        got.append(current_message().envelope)

    async def body() -> None:
        async with broker:
            mid = await broker.publish("t", b"x", headers={"tenant": "t1"}, message_id="m-1")
            await until(lambda: len(got) == 1)
            assert mid == "m-1"

    run(body())
    assert got[0].id == "m-1"
    assert got[0].headers == {"tenant": "t1"}


def test_publisher_declares_and_publishes() -> None:
    """A declared publisher publishes its type to its topic."""
    broker = memory()
    got: list[Point] = []
    points = broker.publisher("points", Point, description="Where things are.")

    @broker.subscriber("points")
    async def handle(message: Point) -> None:
        got.append(message)

    async def body() -> None:
        async with broker:
            await points.publish(Point(x=1))
            await points.publish_many([Point(x=2), Point(x=3)], key="k")
            await until(lambda: len(got) == 3)

    run(body())
    assert [p.x for p in got] == [1, 2, 3]
    assert broker.publishers[0].description == "Where things are."


def test_publish_many_of_nothing_sends_nothing() -> None:
    """An empty batch returns no ids and touches no backend."""
    assert run(memory().publish_many("t", [])) == []


def test_current_message_outside_a_handler_raises() -> None:
    """There is no current message outside a handler."""
    with pytest.raises(LookupError, match="only available inside a message handler"):
        current_message()


def test_message_without_correlation_id_runs_under_its_message_id() -> None:
    """A handler always runs with a correlation id: the message id when the message had none
    (a malformed id gets a fresh one)."""
    broker = memory()
    seen: list[str | None] = []

    @broker.subscriber("t")
    async def handle(message: bytes) -> None:
        seen.append(correlation_id())

    async def body() -> str:
        async with broker:
            mid = await broker.publish("t", b"x")
            await broker.publish("t", b"y", message_id="not a valid correlation id")
            await until(lambda: len(seen) == 2)
        return mid

    mid = run(body())
    assert seen[0] == mid
    assert seen[1] is not None
    assert seen[1] != "not a valid correlation id"
    assert valid_correlation_id(seen[1])


def test_trace_context_flows_to_the_handler() -> None:
    """The publisher's trace id is the handler's (W3C traceparent in the envelope)."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    broker = memory()
    seen: list[int] = []
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    parent = SpanContext(trace_id, 0x00F067AA0BA902B7, True, TraceFlags(TraceFlags.SAMPLED))

    @broker.subscriber("t")
    async def handle(message: bytes) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    async def body() -> None:
        async with broker:
            with trace.use_span(NonRecordingSpan(parent)):
                await broker.publish("t", b"x")
            await until(lambda: len(seen) == 1)

    run(body())
    assert seen == [trace_id]


def test_in_flight_is_bounded_by_concurrency() -> None:
    """With slow handlers, no more than `concurrency` messages are taken from the broker."""
    broker = memory()
    running: list[int] = []
    release = asyncio.Event()

    @broker.subscriber("t", concurrency=2)
    async def handle(message: bytes) -> None:
        running.append(1)
        await release.wait()

    async def body() -> int:
        async with broker:
            await broker.publish_many("t", [b"x"] * 10)
            await until(lambda: len(running) == 2)
            await asyncio.sleep(0.05)
            backend = broker.backend
            assert isinstance(backend, MemoryBackend)
            group = backend.hub.topics["t"].groups["default"]
            leased = sum(1 for e in group.entries.values() if e.lease is not None)
            assert len(running) == 2
            release.set()
            await until(lambda: len(running) == 10)
            return leased

    assert run(body()) == 2


def test_crashed_consumer_messages_come_back_after_the_visibility_timeout() -> None:
    """A consumer that dies holding messages neither acks nor releases them: another
    consumer gets them once the visibility timeout passed, as delivery 2."""
    url = f"memory://{uuid.uuid4().hex}?visibility=0.2"
    seen: list[tuple[str, int]] = []
    stuck = asyncio.Event()

    def consumer(name: str) -> Broker:
        broker = Broker.from_url(url)

        @broker.subscriber("t", concurrency=3)
        async def handle(message: bytes) -> None:
            seen.append((name, current_message().attempt))
            if name == "doomed":
                await stuck.wait()

        return broker

    async def body() -> None:
        doomed = consumer("doomed")
        await doomed.start()
        await doomed.publish_many("t", [b"1", b"2", b"3"])
        await until(lambda: len(seen) == 3)
        backend = doomed.backend
        assert isinstance(backend, MemoryBackend)
        backend.crash()
        async with consumer("survivor"):
            await asyncio.sleep(0.1)
            assert len(seen) == 3  # still within the visibility timeout
            await until(lambda: len(seen) == 6)
        stuck.set()
        await doomed.stop(grace=1)

    run(body())
    assert sorted(seen[3:]) == [("survivor", 2)] * 3


def test_key_order_survives_retries() -> None:
    """On the memory broker a retried message holds back its key's later messages."""
    run(check_key_order_survives_retries(memory()))


def test_run_stops_gracefully_on_a_signal() -> None:
    """`run()` consumes until the signal, then drains: the message being handled is acked."""
    broker = memory()
    done: list[bytes] = []
    started = asyncio.Event()

    @broker.subscriber("t")
    async def handle(message: bytes) -> None:
        started.set()
        await asyncio.sleep(0.05)
        done.append(message)

    async def body() -> None:
        runner = asyncio.create_task(broker.run(signals=(signal.SIGUSR1,)))
        await broker.publish("t", b"x")
        await started.wait()
        os.kill(os.getpid(), signal.SIGUSR1)
        await runner
        assert await broker.backend.dlq_list("t", 10) == []

    run(body())
    assert done == [b"x"]


def test_handler_failure_then_success_is_not_dead_lettered() -> None:
    """A handler that fails once is retried and the DLQ stays empty."""
    broker = memory()
    calls: list[int] = []

    @broker.subscriber("t", retry=QUICK)
    async def handle(message: Order) -> None:
        calls.append(current_message().attempt)
        if len(calls) == 1:
            raise ConnectionError("flaky")

    async def body() -> None:
        async with broker:
            await broker.publish("t", Order(order_id=1))
            await until(lambda: len(calls) == 2)
            assert await broker.dlq_list("t") == []

    run(body())
    assert calls == [1, 2]


def test_retry_budget_is_shared_by_a_subscriber() -> None:
    """The Retry policy's budget is drawn from by redeliveries (the core policy, reused)."""
    from interlink import RetryBudget

    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    broker = memory()
    calls: list[int] = []

    @broker.subscriber("t", retry=Retry(retries=5, backoff=0.01, budget=budget))
    async def handle(message: bytes) -> None:
        calls.append(1)
        raise RuntimeError("down")

    async def body() -> None:
        async with broker:
            await broker.publish("t", b"x")
            await until(lambda: bool(broker.backend.hub.topics["t"].dlq))  # type: ignore[attr-defined]
            [letter] = await broker.dlq_list("t")
            assert "retry budget" in letter.reason

    run(body())
    assert calls == [1]


def test_recording_sdk_gets_producer_and_consumer_spans() -> None:
    """With an SDK, publishing records a PRODUCER span and handling a CONSUMER span, its
    child, in the same trace."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = memory(tracer_provider=provider)
    handled: list[bytes] = []

    @broker.subscriber("t", group="g")
    async def handle(message: bytes) -> None:
        handled.append(message)

    async def body() -> None:
        async with broker:
            await broker.publish("t", b"x")
            await until(lambda: len(exporter.get_finished_spans()) == 2)

    run(body())
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    producer, consumer = spans[SpanKind.PRODUCER], spans[SpanKind.CONSUMER]
    assert (producer.name, consumer.name) == ("t publish", "t process")
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.consumer.group.name"] == "g"
