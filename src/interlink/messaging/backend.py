"""The small protocol every broker backend implements, and the errors of the messaging layer.

A backend moves messages (a body and its native headers, ``interlink.messaging.envelope``)
between a topic and the consumer groups subscribed to it. Everything else (encoding, retry
decisions, DLQ decisions, idempotency, concurrency, shutdown) is the consumer's, so five
backends never disagree about what a retry or a poison message is. Backends live in
``interlink.messaging.backends.<name>`` and are picked by URL scheme; their third-party client
is imported inside their module only.

Semantics every backend provides (the contract suite in ``tests/messaging/contract.py``
checks them):

- ``publish``/``publish_batch`` return only after the broker confirmed the message durable
  (as durable as the backend's documented mode); a batch is sent windowed, not one awaited
  round trip per message.
- ``subscribe(topic, group)``: every group gets every message published after the group
  exists (the first group of a topic may also get what was published before); within a
  group, consumers compete and each message is delivered to one of them at a time.
- Unacknowledged deliveries come back: after ``nack(delay)`` once ``delay`` has passed, and
  after a consumer crash once the backend's lease / visibility timeout expires.
  ``Delivery.attempt`` counts deliveries (1 on the first).
- ``dead_letter`` moves the original body and headers, the reason, the error type, the
  attempt count and the times to ``<topic>.dlq`` and acknowledges the message, atomically
  where the broker can.
- ``dlq_replay`` re-publishes dead letters to their topic unchanged (same message id) and
  removes them from the DLQ; running it twice does not publish twice what the first run
  finished. ``dlq_purge`` drops them.
- Stopping: the consumer cancels a pending ``__anext__`` of the iterator and then calls its
  ``aclose()`` (an async generator has both); deliveries the backend fetched but did not hand
  out must go back to the queue (released at once where possible, else by the lease timeout).
- Batches: a ``subscribe`` iterator may also have ``ready()``, the next delivery it already
  fetched or None, without waiting; the consumer takes from it before awaiting ``__anext__``,
  so a fetched batch costs one suspension, not one per message (Kafka's does).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, cast
from urllib.parse import urlsplit

from interlink.errors import InterlinkError, _Fields
from interlink.messaging.envelope import Binding, DeadLetter, Envelope, OutgoingMessage

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ConsumerLag",
    "Delivery",
    "MessagingError",
    "PublishError",
]


class MessagingError(InterlinkError):
    """Base class of the errors raised by brokers, consumers and idempotency stores."""


@dataclass(eq=False, repr=False)
class PublishError(MessagingError, _Fields):
    """The broker did not confirm a message on ``topic`` (refused, nacked or timed out):
    it may or may not have been stored, so publishing again (same id) is the safe reaction."""

    _template = "publish to '{topic}' was not confirmed: {reason}"
    topic: str
    reason: str


@dataclass(eq=False, repr=False)
class BackendUnavailable(MessagingError, _Fields):
    """The backend at ``url`` (credentials removed) cannot be used: unreachable, not
    installed, or an unknown scheme."""

    _template = "messaging backend {url!r} is unavailable: {reason}"
    url: str
    reason: str


class Delivery(Protocol):
    """One delivery of one message to one consumer. Exactly one of ``ack``, ``nack`` or
    ``dead_letter`` is called on it; calls after that, or after the backend took the
    delivery back (lease expired), must not raise and must not touch the newer delivery."""

    @property
    def envelope(self) -> Envelope:
        """The envelope (``envelope.read``: ``error`` set for headers it could not read)."""
        ...

    @property
    def raw(self) -> bytes:
        """The body as published."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The native headers as received (what a dead letter keeps)."""
        ...

    @property
    def attempt(self) -> int:
        """Deliveries of this message to this group so far, this one included (1 at first)."""
        ...

    async def ack(self) -> None:
        """Done with it: never deliver it to this group again (may be batched by the backend)."""
        ...

    async def nack(self, delay: float) -> None:
        """Deliver it again after ``delay`` seconds, with ``attempt + 1``."""
        ...

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        """Move it to ``<topic>.dlq`` (original body and headers, ``reason``, ``error_type``,
        attempts, times) and acknowledge it."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerLag:
    """How far one consumer group is behind on one topic, from the broker's own figures."""

    topic: str
    group: str
    #: messages published to the topic that the group has not acknowledged yet (in flight and
    #: waiting for a retry included)
    pending: int
    #: seconds since the oldest of them was published; None when nothing is pending or the
    #: broker does not say (RabbitMQ, Kafka)
    oldest_age: float | None = None


class Backend(Protocol):
    """A broker connection. One instance serves any number of publishers and subscriptions
    in one process; made from its URL (``Cls.from_url(url)``), opened with ``connect``.
    ``binding`` names the CloudEvents attributes in its protocol's headers."""

    scheme: ClassVar[str]
    binding: ClassVar[Binding]

    @classmethod
    def from_url(cls, url: str) -> Backend:
        """The (not yet connected) backend for ``url``, picked by its scheme and its module
        imported on demand (``Backend.from_url("nats://localhost:4222")``); a backend class
        called this way makes one of its own kind."""
        scheme = urlsplit(url).scheme.lower()
        target = _BACKENDS.get(scheme)
        if target is None:
            known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
            raise ValueError(f"'url' must start with one of {known}: {redact(url)!r}")
        module_name, _, class_name = target.partition(":")
        module = importlib.import_module(module_name)
        return cast(Backend, getattr(module, class_name).from_url(url))

    async def connect(self) -> None:
        """Open connections; idempotent."""
        ...

    async def aclose(self) -> None:
        """Flush pending acks, release what was prefetched, close connections; idempotent."""
        ...

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Store one message durably (its ``data`` the body, its ``headers`` the complete
        native headers, as ``envelope.headers_for`` writes them); returns after the broker
        confirmed it."""
        ...

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Store many messages, windowed; returns after the broker confirmed all of them.
        Raises ``PublishError`` if any was not confirmed (then any may have been stored)."""
        ...

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries of ``topic`` for ``group``, at most ``prefetch`` fetched ahead."""
        ...

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the topic and the group's durable subscription now, so every message
        published after this returns reaches the group. Idempotent. Optional: the consumer
        calls it (before ``Broker.start`` returns) when the backend has it."""
        ...

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first."""
        ...

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish the dead letters with these message ids (all when None) to ``topic``
        unchanged and remove them from the DLQ; returns how many were re-published."""
        ...

    async def dlq_purge(self, topic: str) -> int:
        """Delete every dead letter of ``topic``; returns how many."""
        ...

    async def dlq_count(self, topic: str) -> int:
        """How many dead letters ``topic`` holds."""
        ...

    async def topics(self) -> list[str]:
        """The topics the broker knows (DLQs included as ``<topic>.dlq``), sorted."""
        ...

    async def groups(self, topic: str) -> list[str]:
        """The consumer groups the broker keeps for ``topic``, sorted. Optional (AMQP cannot
        list queues)."""
        ...

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """How many messages of ``topic`` ``group`` has not acknowledged, and the oldest's age,
        from the broker's own bookkeeping (no message is read). Optional: ``Broker.lag``
        answers None for a backend without it."""
        ...


# URL scheme -> "module:Class". Modules are imported only when their scheme is used.
_BACKENDS: Mapping[str, str] = {
    "memory": "interlink.messaging.backends.memory:MemoryBackend",
    "sqlite": "interlink.messaging.backends.sqlite:SqliteBackend",
    "nats": "interlink.messaging.backends.nats:NatsBackend",
    "tls": "interlink.messaging.backends.nats:NatsBackend",
    "amqp": "interlink.messaging.backends.rabbitmq:RabbitBackend",
    "amqps": "interlink.messaging.backends.rabbitmq:RabbitBackend",
    "redis": "interlink.messaging.backends.redis:RedisBackend",
    "rediss": "interlink.messaging.backends.redis:RedisBackend",
    "kafka": "interlink.messaging.backends.kafka:KafkaBackend",
}


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
