"""The user-facing broker: publish messages, register handlers, run the consumers.

``Broker.from_url(url)`` picks the backend by scheme (``memory://``, ``sqlite:///path``,
``nats://``, ``amqp://``, ``redis://``); everything above the backend is the same code for all
of them, so a handler tested on ``memory://`` behaves the same on NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from urllib.parse import urlsplit

from interlink.clock import Clock
from interlink.context import correlation_id
from interlink.messaging import _trace
from interlink.messaging._codec import GROUP, batch_of, check_topic, decoder_for, payload_of
from interlink.messaging._ids import new_id
from interlink.messaging.backend import Backend, ConsumerLag
from interlink.messaging.consumer import Consumer, Subscription
from interlink.messaging.envelope import (
    FIELDS,
    Binding,
    DeadLetter,
    OutgoingMessage,
    check_headers,
    headers_for,
)
from interlink.messaging.idempotency import IdempotencyStore
from interlink.resilience._validate import at_least, non_negative, positive_int
from interlink.resilience.retry import Retry
from interlink.tracing.propagation import inject
from interlink.tracing.spans import Spans

__all__ = ["DEFAULT_GRACE", "DEFAULT_MAX_DELIVERIES", "Broker", "Publisher", "PublisherSpec"]

#: Seconds running handlers get to finish when the broker stops.
DEFAULT_GRACE = 10.0
#: Deliveries of a failing message before it goes to the DLQ.
DEFAULT_MAX_DELIVERIES = 5
#: Deliveries a consumer fetches ahead of its handlers, at least.
DEFAULT_PREFETCH = 32
_TOPIC_CACHE = 1024  # topic names remembered as valid, per broker

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class PublisherSpec:
    """A declared publisher (for the AsyncAPI document)."""

    topic: str
    message_type: Any
    description: str | None = None


class Publisher(Generic[M]):
    """Publishes one message type to one topic, and declares it for the AsyncAPI document."""

    __slots__ = ("_broker", "spec")

    def __init__(self, broker: Broker, spec: PublisherSpec) -> None:
        self._broker = broker
        self.spec = spec

    async def publish(
        self,
        message: M,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> str:
        """``Broker.publish`` to this publisher's topic."""
        return await self._broker.publish(
            self.spec.topic, message, key=key, headers=headers, message_id=message_id
        )

    async def publish_many(
        self, messages: Iterable[M], *, key: str | Callable[[M], str | None] | None = None
    ) -> list[str]:
        """``Broker.publish_many`` to this publisher's topic."""
        return await self._broker.publish_many(self.spec.topic, messages, key=key)


class Broker:
    """Publish and consume messages through one backend.

    Publishing connects on first use. ``start()`` (or ``async with broker``) connects, creates
    every subscriber's group, and starts the consumers; ``stop()`` drains them gracefully and
    closes the connection; ``run()`` does both around waiting for SIGINT/SIGTERM.
    ``idempotency`` is the store ``idempotent=True`` subscribers use (a URL or a store); by
    default the backend's own database (memory, SQLite, Redis) where it has one. ``source`` is
    the CloudEvents ``source`` of what this broker publishes (``/<title>`` by default).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        url: str | None = None,
        grace: float = DEFAULT_GRACE,
        idempotency: str | IdempotencyStore | None = None,
        title: str = "interlink",
        version: str = "1.0.0",
        source: str | None = None,
        clock: Clock = time.time,
        tracer_provider: object | None = None,
    ) -> None:
        self._backend = backend
        self._url = url
        self._grace = non_negative("grace", grace)
        self._idempotency = idempotency
        self._stores: dict[str, IdempotencyStore] = {}
        self._subscriptions: list[Subscription] = []
        self._publishers: list[PublisherSpec] = []
        self._consumers: list[Consumer] = []
        self._connected = False
        self._topics: set[str] = set()
        self._lock: asyncio.Lock | None = None
        self._clock = clock
        self._spans = Spans(tracer_provider, name="interlink.messaging")
        self.title = title
        self.version = version
        self._source = source or f"/{title}"
        binding = getattr(backend, "binding", FIELDS)
        self._binding: Binding = binding if isinstance(binding, Binding) else FIELDS

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Broker:
        """A broker on the backend ``url`` names (imported on demand); options as ``Broker``."""
        return cls(Backend.from_url(url), url=url, **options)

    @property
    def backend(self) -> Backend:
        """The backend, for what the broker does not wrap."""
        return self._backend

    @property
    def url(self) -> str | None:
        """The URL the broker was made from, if any."""
        return self._url

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """Registered subscribers, in registration order."""
        return tuple(self._subscriptions)

    @property
    def publishers(self) -> tuple[PublisherSpec, ...]:
        """Declared publishers, in declaration order."""
        return tuple(self._publishers)

    # -- connection ---------------------------------------------------------------------

    async def connect(self) -> Backend:
        """Connect the backend (once) and return it."""
        if not self._connected:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self._connected:
                    await self._backend.connect()
                    self._connected = True
        return self._backend

    async def start(self) -> None:
        """Connect, create every subscriber's group, start consuming."""
        await self.connect()
        if self._consumers:
            return
        self._consumers = [Consumer(self._backend, sub, self._spans) for sub in self._subscriptions]
        for consumer in self._consumers:
            await consumer.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop consuming (running handlers get ``grace`` seconds, the broker's by default),
        then close the connection. Publishing afterwards reconnects."""
        consumers, self._consumers = self._consumers, []
        wait = self._grace if grace is None else non_negative("grace", grace)
        await asyncio.gather(*(c.stop(wait) for c in consumers))
        stores = list(self._stores.values())
        for store in stores:
            await store.aclose()
        if self._connected:
            self._connected = False
            await self._backend.aclose()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def run(self, *, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Consume until one of ``signals`` arrives, then stop gracefully."""
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        installed = []
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stopped.set)
                installed.append(sig)
        try:
            await self.start()
            await stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- publishing ---------------------------------------------------------------------

    def _topic(self, topic: str) -> str:
        # check_topic's regex once per topic, not once per publish
        if type(topic) is str and topic in self._topics:
            return topic
        check_topic(topic)
        if len(self._topics) < _TOPIC_CACHE:
            self._topics.add(topic)
        return topic

    async def publish(
        self,
        topic: str,
        message: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Publish ``message`` (a pydantic model, bytes, str or JSON-able value) and wait for
        the broker to confirm it durable. The body on the wire is the payload itself; the id,
        type, time, key and ``headers`` travel in the broker's native headers (CloudEvents
        binary mode). Returns the id; pass ``message_id`` to re-publish under the same id (an
        outbox relay after a crash), so idempotent consumers see one message."""
        backend = self._backend if self._connected else await self.connect()
        topic = self._topic(topic)
        hdrs: dict[str, str] = {}
        if headers:
            check_headers(headers)
            hdrs.update(headers)
        mid = message_id or new_id()
        tracer = self._spans.tracer()
        if tracer is None:  # no SDK: no span, only the context to carry on
            inject(hdrs)
            await backend.publish(topic, self._prepare(message, key, hdrs, mid))
            return mid
        with _trace.publish_span(tracer, topic, hdrs):
            await backend.publish(topic, self._prepare(message, key, hdrs, mid))
        return mid

    def _prepare(
        self, message: Any, key: str | None, hdrs: dict[str, str], mid: str
    ) -> OutgoingMessage:
        if type(message) is bytes:
            payload, type_name = message, "bytes"
        else:
            payload, type_name = payload_of(message)
        native = headers_for(
            self._binding,
            message_id=mid,
            type=type_name,
            time=self._clock(),
            source=self._source,
            key=key,
            correlation_id=correlation_id(),
            headers=hdrs,
        )
        return OutgoingMessage(payload, key, native, mid)

    async def publish_many(
        self,
        topic: str,
        messages: Iterable[Any],
        *,
        key: str | Callable[[Any], str | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Publish many messages in one windowed batch and wait until all are confirmed.
        ``key`` is one key for all or a function of the message. Returns their ids."""
        backend = self._backend if self._connected else await self.connect()
        hdrs: dict[str, str] = {}
        if headers:
            check_headers(headers)
            hdrs.update(headers)
        tracer = self._spans.tracer()
        if tracer is None:
            inject(hdrs)
            return await self._publish_many(backend, topic, messages, key, hdrs)
        with _trace.publish_span(tracer, topic, hdrs):
            return await self._publish_many(backend, topic, messages, key, hdrs)

    async def _publish_many(
        self,
        backend: Backend,
        topic: str,
        messages: Iterable[Any],
        key: str | Callable[[Any], str | None] | None,
        hdrs: dict[str, str],
    ) -> list[str]:
        batch = messages if isinstance(messages, list | tuple) else list(messages)
        if not batch:
            return []
        items = batch_of(
            batch,
            key,
            binding=self._binding,
            time=self._clock(),
            source=self._source,
            correlation_id=correlation_id(),
            headers=hdrs,
        )
        await backend.publish_batch(self._topic(topic), items)
        return [item.message_id for item in items]

    def publisher(
        self, topic: str, message_type: type[M], *, description: str | None = None
    ) -> Publisher[M]:
        """Declare that this service publishes ``message_type`` to ``topic``."""
        spec = PublisherSpec(check_topic(topic), message_type, description)
        self._publishers.append(spec)
        return Publisher(self, spec)

    # -- subscribing --------------------------------------------------------------------

    def _store(self, idempotent: bool | str | IdempotencyStore) -> IdempotencyStore | None:
        if idempotent is False:
            return None
        if idempotent is True:
            idempotent = self._idempotency or self._default_store_url()
        if not isinstance(idempotent, str):
            return idempotent
        store = self._stores.get(idempotent)
        if store is None:
            store = self._stores[idempotent] = IdempotencyStore.from_url(idempotent)
        return store

    def _default_store_url(self) -> str:
        scheme = getattr(self._backend, "scheme", "")
        if scheme == "memory":
            return "memory://"
        if scheme == "sqlite" and self._url:
            return self._url
        if scheme == "redis" and self._url:
            # the broker's options (?visibility_timeout=...) mean nothing to the store's client
            return urlsplit(self._url)._replace(query="", fragment="").geturl()
        raise ValueError(
            f"'idempotent' must be a store URL for the {scheme or 'given'} backend "
            "(or pass Broker(idempotency=...)): True has no default store"
        )

    def subscriber(
        self,
        topic: str,
        *,
        group: str = "default",
        retry: Retry | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        concurrency: int = 1,
        prefetch: int | None = None,
        idempotent: bool | str | IdempotencyStore = False,
        description: str | None = None,
    ) -> Callable[[H], H]:
        """Register ``async def handler(message)`` for ``topic`` in consumer ``group``.

        Success acks. An exception retries after ``retry``'s backoff (default: exponential
        from 1 s, equal jitter, up to 5 min) until ``max_deliveries`` or the policy gives
        up, then dead-letters to ``<topic>.dlq``; an undecodable or invalid message is
        dead-lettered at once. ``concurrency`` handlers run at once (messages with the same
        key one after another); ``idempotent`` skips messages the group already processed.
        """
        check_topic(topic)
        if not isinstance(group, str) or not GROUP.match(group):
            raise ValueError(f"'group' must be 1-100 characters of [A-Za-z0-9_-]: {group!r}")
        at_least("max_deliveries", max_deliveries, 1)
        positive_int("concurrency", concurrency)
        if prefetch is not None:
            positive_int("prefetch", prefetch)
        if retry is None:
            retry = Retry(
                retries=max_deliveries - 1,
                backoff=1.0,
                max_backoff=300.0,
                jitter="equal",
                name=f"{topic}/{group}",
            )
        store = self._store(idempotent)

        def register(handler: H) -> H:
            fn: Any = handler  # (iscoroutinefunction would narrow H away)
            if not inspect.iscoroutinefunction(fn):
                raise ValueError(f"'handler' must be an async def: {handler!r}")
            decode, message_type = decoder_for(handler)
            self._subscriptions.append(
                Subscription(
                    topic=topic,
                    group=group,
                    handler=handler,
                    decode=decode,
                    message_type=message_type,
                    retry=retry,
                    max_deliveries=max_deliveries,
                    concurrency=concurrency,
                    prefetch=prefetch or max(DEFAULT_PREFETCH, 2 * concurrency),
                    idempotency=store,
                    description=description or inspect.getdoc(handler),
                )
            )
            return handler

        return register

    # -- the dead-letter queue and topics -----------------------------------------------

    async def dlq_list(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first."""
        return await (await self.connect()).dlq_list(topic, limit)

    async def dlq_replay(self, topic: str, ids: Iterable[str] | None = None) -> int:
        """Re-publish dead letters (these ids, or all) to ``topic`` with their ids."""
        return await (await self.connect()).dlq_replay(topic, None if ids is None else list(ids))

    async def dlq_count(self, topic: str) -> int:
        """How many dead letters ``topic`` holds."""
        return await (await self.connect()).dlq_count(topic)

    async def dlq_purge(self, topic: str) -> int:
        """Drop every dead letter of ``topic``."""
        return await (await self.connect()).dlq_purge(topic)

    async def topics(self) -> list[str]:
        """The topics the backend knows, DLQs included."""
        return await (await self.connect()).topics()

    async def lag(self, topic: str, group: str) -> ConsumerLag | None:
        """How far ``group`` is behind on ``topic`` (messages not acknowledged yet and the
        oldest's age), or None when the backend cannot say."""
        backend = await self.connect()
        lag = getattr(backend, "lag", None)
        return None if lag is None else cast(ConsumerLag, await lag(topic, group))

    async def lags(self) -> list[ConsumerLag]:
        """``lag`` of every subscription of this broker; for a broker with none (a dashboard's,
        a monitor's), of every group of every topic the backend can list."""
        backend = await self.connect()
        pairs = list(dict.fromkeys((s.topic, s.group) for s in self._subscriptions))
        groups = getattr(backend, "groups", None)
        if not pairs and groups is not None:
            for topic in await backend.topics():
                if not topic.endswith(".dlq"):
                    pairs += [(topic, group) for group in await groups(topic)]
        seen: list[ConsumerLag] = []
        for topic, group in pairs:
            lag = await self.lag(topic, group)
            if lag is not None:
                seen.append(lag)
        return seen
