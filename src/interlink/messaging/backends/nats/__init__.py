"""NATS JetStream backend: ``nats://host:4222`` (``tls://`` for TLS; servers comma-separated).

Layout on the server:

- one stream per topic, named ``interlink:<topic with ':' for '.'>``, capturing the subject
  ``<topic>`` (an existing stream that already captures the subject is used instead, so an
  operator can provision one stream for a whole prefix); file storage by default;
- one durable pull consumer per group, named after the group: explicit ack, ``ack_wait`` is the
  lease, ``max_deliver`` unlimited (the interlink consumer dead-letters at ``max_deliveries``;
  JetStream's own limit would only stop redelivering and leave the message nowhere);
- ``<topic>.dlq`` is an ordinary topic (its own stream) holding ``encode_dead_letter`` records.

Publishing awaits the PubAck (the message is stored in the stream). A user's publish carries no
``Nats-Msg-Id``: as on every backend, a re-published id is a second message, which the
idempotent consumer recognises; the backend's own moves (dead-lettering, replay) carry one, so
one repeated after a lost reply lands once within the stream's ``duplicate_window``. A batch
sends every message at once and then gathers the acks (on one reply inbox of the connection's
own, without nats-py's per-message overhead). Retries are ``NAK`` with a delay: the message
stays in the stream and the server redelivers it to any consumer of the group;
``Delivery.attempt`` is the server's delivery count.

Consuming pulls with a credit window: up to ``prefetch`` messages are requested ahead, more are
asked for when half are used, and acks are fire-and-forget publishes (as in every NATS client):
a crash right after an ack may redeliver, never lose. On stop the subscription drains and the
fetched messages nobody took are NAKed back at once.

URL options: ``ack_wait`` (s, 30), ``storage`` (file|memory), ``replicas`` (1), ``max_age``
(s, 0 = keep), ``max_msgs`` (0 = no limit), ``duplicate_window`` (s, 120), ``timeout`` (s, 5:
a publish's confirmation), ``connect_timeout`` (s, 5), ``reconnect_wait`` (s, 0.5), ``pull_expires``
(s, 5), ``stream_prefix`` (``interlink:``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import ModuleType
from typing import ClassVar

from interlink.messaging.backends._base import ConnectionBackend, client_library

with client_library("nats", "nats-py", "nats"):
    import nats  # noqa: F401 - the client library, checked here for the install hint

from interlink.messaging.backend import ConsumerLag, Delivery
from interlink.messaging.backends.nats import _dlq
from interlink.messaging.backends.nats._jetstream import JetStream
from interlink.messaging.backends.nats._pull import pull
from interlink.messaging.envelope import NATS, Binding, OutgoingMessage

__all__ = ["NatsBackend"]


class NatsBackend(ConnectionBackend[JetStream]):
    """Messages in NATS JetStream streams (see the module docstring for the layout). A DLQ
    replay's publish carries a ``Nats-Msg-Id`` naming the DLQ entry, so a replay interrupted
    between its two steps and run again within the duplicate window lands once."""

    scheme: ClassVar[str] = "nats"
    binding: ClassVar[Binding] = NATS
    dlq: ClassVar[ModuleType] = _dlq

    def _open(self, url: str) -> JetStream:
        return JetStream(url)

    @property
    def visibility_timeout(self) -> float:
        """Seconds a dead consumer's deliveries stay unacked: the consumers' ``ack_wait``."""
        return self.connection.ack_wait

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the stream and the group's durable consumer. The topic's first group
        starts at the beginning of the stream; a later group at its end (it gets what is
        published from now on, not the topic's whole history)."""
        await self.connection.ensure_group(topic, group)

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Publish and wait for the PubAck."""
        await self.connection.publish_one(topic, message.data, message.headers)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Send every message, then gather their PubAcks (no round trip per message)."""
        await self.connection.publish_batch(topic, items)

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Pull deliveries for ``group`` with up to ``prefetch`` requested ahead."""
        return pull(self.connection, topic, group, max(1, prefetch))

    async def groups(self, topic: str) -> list[str]:
        """The durable consumers of the topic's stream (interlink's own backlog consumer
        left out)."""
        return await _dlq.groups(self.connection, topic)

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """The group's consumer info: ``num_pending`` (not delivered yet) plus
        ``num_ack_pending`` (delivered, not acknowledged); the age of the first message past
        its ack floor."""
        return await _dlq.lag(self.connection, topic, group)
