"""One process's link to a Kafka cluster: the URL's options, the producer every publish goes
through, topic creation, and the headers as Kafka carries them (bytes) and interlink reads them
(text)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner

from interlink.messaging.backend import BackendUnavailable, PublishError, redact
from interlink.messaging.backends._options import (
    UrlOptions,
    connect_failure,
)
from interlink.messaging.envelope import Binding, OutgoingMessage

__all__ = ["KAFKA", "NOT_BEFORE", "RETRY_FOR", "KafkaConnection", "text_headers", "wire_headers"]

#: The CloudEvents Kafka protocol binding: ``ce_`` record headers, ``content-type``; the
#: message key is the record key (and, as the ``partitionkey`` extension, ``ce_partitionkey``).
KAFKA = Binding("ce_", "content-type")
#: On a retry copy: when it may be handled (seconds since the epoch), and the one group it is
#: for (every other group skips it). CloudEvents extension names, so reserved for interlink.
NOT_BEFORE = "ce_notbefore"
RETRY_FOR = "ce_retryfor"

_decode = bytes.decode  # one lookup, not one per header
# what the producer places a keyed record with (it is made with no other partitioner)
_PARTITIONER = DefaultPartitioner()
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def wire_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Headers as a Kafka record carries them."""
    return [(name, value.encode()) for name, value in headers.items()]


def text_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """A record's headers as text: undecodable bytes replaced, a null value empty, the last of
    a repeated name kept (a foreign producer's headers never crash the reader)."""
    try:
        return {name: _decode(value) for name, value in headers}  # type: ignore[arg-type]
    except (TypeError, UnicodeDecodeError):  # a null value, bytes that are not UTF-8
        return {
            name: value.decode("utf-8", "replace") if value is not None else ""
            for name, value in headers
        }


def check_topic(topic: str) -> None:
    """Kafka's own rule for topic names, as a clear error before any request."""
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise ValueError(
            f"'topic' must be 1-249 characters of letters, digits, '.', '_' or '-' on "
            f"Kafka: {topic!r}"
        )


class _Deadlines:
    """The ``timeout`` of the publishes in progress, kept by one timer for all of them: it
    fires at the oldest's deadline, cancels the tasks whose deadline passed and re-arms for
    the next. (A timeout scope per publish would arm and disarm a timer each time, and leave
    the cancelled one in the event loop's heap.)"""

    __slots__ = ("expired", "timeout", "timer", "waiting")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.waiting: dict[asyncio.Task[Any], float] = {}  # in deadline order
        self.expired: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[Any]) -> None:
        """Start ``task``'s deadline (``forget`` ends it)."""
        loop = task.get_loop()
        deadline = loop.time() + self.timeout
        self.waiting[task] = deadline
        if self.timer is None:
            self.timer = loop.call_at(deadline, self._fire, loop)

    def forget(self, task: asyncio.Task[Any]) -> bool:
        """End ``task``'s deadline; True if it had passed (the task was cancelled for it)."""
        self.waiting.pop(task, None)
        if task in self.expired:
            self.expired.discard(task)
            return True
        return False

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self.timer = None
        now = loop.time()
        for task, deadline in list(self.waiting.items()):
            if deadline > now:
                self.timer = loop.call_at(deadline, self._fire, loop)
                return
            del self.waiting[task]
            self.expired.add(task)
            task.cancel()

    def close(self) -> None:
        """Disarm the timer (the connection is closing)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class KafkaConnection:
    """The options of one ``kafka://`` URL, its producer and its admin client."""

    def __init__(self, url: str) -> None:
        self.url = url
        options = UrlOptions(url, "kafka")
        netloc = options.base.split("://", 1)[1].strip("/")
        self.bootstrap = [part or "localhost:9092" for part in netloc.split(",")] or [
            "localhost:9092"
        ]
        self.partitions = int(options.integer("partitions", 4, minimum=1) or 4)
        self.replication = int(options.integer("replication", 1, minimum=1) or 1)
        self.timeout = options.number("timeout", 10.0, minimum=0.1)
        self.connect_timeout = options.number("connect_timeout", 5.0, minimum=0.1)
        self.session_timeout = options.number("session_timeout", 10.0, minimum=1.0)
        self.heartbeat = options.number("heartbeat", 1.0, minimum=0.05)
        self.dlq_max_age, self.dlq_max_count = options.dlq_retention()
        options.done()
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._deadlines = _Deadlines(self.timeout)

    def closing(self, close: Coroutine[Any, Any, None]) -> None:
        """Run a subscription's ``close`` in the background; ``aclose`` waits for it."""
        task = asyncio.get_running_loop().create_task(close, name="interlink: kafka leave group")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def client_options(self) -> dict[str, Any]:
        """What every aiokafka client of this URL is made with."""
        return {
            "bootstrap_servers": self.bootstrap,
            "request_timeout_ms": int(max(self.timeout, self.session_timeout) * 1000) + 5000,
        }

    def consumer(self, *topics: str, group: str | None, **extra: Any) -> AIOKafkaConsumer:
        """A consumer with offsets committed by hand (never automatically)."""
        return AIOKafkaConsumer(
            *topics,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.heartbeat * 1000),
            **self.client_options(),
            **extra,
        )

    async def connect(self) -> None:
        """Start the producer and the admin client (once)."""
        if self._producer is not None:
            return
        async with self._lock:
            if self._admin is not None:  # another task connected meanwhile
                return
            producer = AIOKafkaProducer(acks="all", linger_ms=0, **self.client_options())
            admin = AIOKafkaAdminClient(**self.client_options())
            try:
                await asyncio.wait_for(producer.start(), self.connect_timeout)
                await asyncio.wait_for(admin.start(), self.connect_timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                with contextlib.suppress(Exception):
                    await admin.close()
                tried = redact(",".join(self.bootstrap))
                reason = connect_failure(exc, tried=tried, within=self.connect_timeout)
                raise BackendUnavailable(redact(self.url), reason) from exc
            self._producer, self._admin = producer, admin

    async def aclose(self) -> None:
        """Wait for closing subscriptions (their handlers' retry copies need the producer),
        then flush and stop the producer, close the admin client."""
        if self._closing:
            await asyncio.wait(set(self._closing))
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        self._deadlines.close()
        self._known.clear()
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()

    def admin(self) -> AIOKafkaAdminClient:
        """The admin client (after ``connect``)."""
        if self._admin is None:
            raise BackendUnavailable(redact(self.url), "not connected")
        return self._admin

    async def ensure_topic(self, topic: str, *, partitions: int | None = None) -> None:
        """Create ``topic`` if this process has not seen it yet (an existing one is kept as
        it is: partition counts are the operator's once a topic exists)."""
        if topic in self._known:
            return
        check_topic(topic)
        await self.connect()
        admin = self.admin()
        if topic not in await admin.list_topics():
            await self._create(topic, partitions)
        self._known.add(topic)

    async def _create(self, topic: str, partitions: int | None) -> None:
        # A DLQ has one partition (one order to read and mark it in) and the DLQ's age as its
        # retention; a broker refusing that config still gets the topic.
        attempts: list[dict[str, str] | None] = [None]
        if topic.endswith(".dlq"):
            partitions = 1
            attempts.insert(0, {"retention.ms": str(int(self.dlq_max_age * 1000))})
        for configs in attempts:
            new = NewTopic(
                topic, partitions or self.partitions, self.replication, topic_configs=configs
            )
            try:
                await self.admin().create_topics([new])
                return
            except TopicAlreadyExistsError:
                return
            except KafkaError as exc:
                if configs is None:
                    raise BackendUnavailable(
                        redact(self.url), f"cannot create topic {topic!r}: {exc!r}"
                    ) from exc

    async def list_topics(self) -> list[str]:
        """Every topic of the cluster but Kafka's internal ones (``__consumer_offsets``)."""
        await self.connect()
        return [t for t in await self.admin().list_topics() if not t.startswith("__")]

    async def publish_one(
        self, topic: str, data: bytes, key: str | None, headers: Mapping[str, str]
    ) -> None:
        """Send one record and wait for the broker's acknowledgement (``acks=all``)."""
        if topic not in self._known:
            await self.ensure_topic(topic)
        producer = self._producer
        if producer is None:
            raise PublishError(topic, "not connected")
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - a coroutine awaited outside a task
            raise PublishError(topic, "publish needs a running task")
        cancelling = task.cancelling()
        deadlines = self._deadlines
        deadlines.add(task)
        try:
            sent = await producer.send(
                topic,
                data,
                key=key.encode() if key is not None else None,
                headers=wire_headers(headers),
            )
            await sent
        except (KafkaError, OSError) as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        except asyncio.CancelledError as exc:
            # cancelled for its deadline, and by nobody else meanwhile: a timeout
            if deadlines.forget(task) and task.uncancel() <= cancelling:
                raise PublishError(
                    topic, f"TimeoutError: not acknowledged within {self.timeout}s"
                ) from exc
            raise
        finally:
            deadlines.forget(task)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Fill one record batch per partition (aiokafka's ``create_batch``), hand each full
        one to the producer (``send_batch``), then wait for every batch's acknowledgement.

        A keyed record goes to the partition the producer's own partitioner gives its key
        (as ``publish_one``'s do); the records without a key go round the partitions, from
        one drawn at random. Per partition the batches leave in order, so the records of a
        key keep theirs.
        """
        await self.ensure_topic(topic)
        producer = self._producer
        if producer is None:
            raise PublishError(topic, "not connected")
        if not items:
            return
        sent: list[tuple[asyncio.Future[Any], int]] = []
        try:
            async with asyncio.timeout(self.timeout):
                everyone = list(await producer.partitions_for(topic))
                await self._fill(producer, topic, items, everyone, sent)
                await asyncio.wait([future for future, _ in sent])
        except (KafkaError, OSError) as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError:
            pass  # counted below: the batches not confirmed in time
        failed = len(items) - sum(count for _, count in sent)  # not handed over in time
        first: BaseException | None = None
        for future, count in sent:
            if not future.done():
                future.cancel()
                failed += count
            elif (error := future.exception()) is not None:
                failed += count
                first = first or error
        if failed:
            why = f"{type(first).__name__}: {first}" if first is not None else "timed out"
            raise PublishError(topic, f"{failed} of {len(items)} not confirmed ({why})")

    @staticmethod
    async def _fill(
        producer: AIOKafkaProducer,
        topic: str,
        items: Sequence[OutgoingMessage],
        everyone: list[int],
        sent: list[tuple[asyncio.Future[Any], int]],
    ) -> None:
        open_: dict[int, Any] = {}  # partition -> the batch being filled
        of_key: dict[str, int] = {}  # key -> partition, the partitioner asked once a key
        count = len(everyone)
        turn = random.randrange(count)  # the records without a key take turns
        # id(shared headers) -> them as bytes: encoded once per type and key, not per record
        # (the items hold the mappings, so no id is reused while this runs)
        encoded: dict[int, list[tuple[str, bytes]]] = {}
        id_name = KAFKA.id
        send_batch, create_batch = producer.send_batch, producer.create_batch
        for item in items:
            key = item.key
            if key is None:
                turn += 1
                partition, key_bytes = everyone[turn % count], None
            else:
                key_bytes = key.encode()
                partition = of_key.get(key, -1)
                if partition < 0:
                    partition = of_key[key] = _PARTITIONER(key_bytes, everyone, everyone)
            shared = item.shared
            if shared is None:
                headers = wire_headers(item.headers)
            else:
                common = encoded.get(id(shared))
                if common is None:
                    common = encoded[id(shared)] = wire_headers(shared)
                headers = [*common, (id_name, item.message_id.encode())]
            batch = open_.get(partition)
            if batch is None:
                batch = open_[partition] = create_batch()
            if (
                batch.append(timestamp=None, key=key_bytes, value=item.data, headers=headers)
                is None
            ):
                # full: it leaves, a new one takes the record (a first record always fits)
                sent.append(
                    (await send_batch(batch, topic, partition=partition), batch.record_count())
                )
                batch = open_[partition] = create_batch()
                batch.append(timestamp=None, key=key_bytes, value=item.data, headers=headers)
        for partition, batch in open_.items():
            sent.append((await send_batch(batch, topic, partition=partition), batch.record_count()))
