"""How the relay and the saga orchestrator hand messages to the broker.

Both publish *prepared* messages: the id, type, key, headers, correlation id and time were fixed
when the outbox row (or the saga command) was written, and must not change when the message is
published again after a crash, or the consumer's idempotency store (the inbox) could not
recognise the duplicate. So they build the message's native headers themselves (CloudEvents
binary mode, named as the backend's binding names them) and give the payload and the headers
to the backend of an ``interlink.messaging.Broker`` (or to anything with the backend's
``publish``), waiting for the broker's confirmation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from interlink.messaging.envelope import FIELDS, Binding, OutgoingMessage, headers_for

__all__ = ["Prepared", "RelayTarget", "Sink"]


@runtime_checkable
class RelayTarget(Protocol):
    """Where the relay (and a saga's ``Send``) can hand prepared messages, besides a
    ``Broker``: anything with a broker backend's confirmed publish of one message
    (``interlink.messaging.Backend`` has it)."""

    async def publish(self, topic: str, message: OutgoingMessage) -> None: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message whose every field is already decided."""

    id: str
    topic: str
    payload: bytes
    type: str = "bytes"
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    created_at: float = 0.0

    def outgoing(self, binding: Binding) -> OutgoingMessage:
        """The message as a backend with ``binding`` publishes it: the payload, and the
        native headers (``interlink.messaging.envelope.headers_for``)."""
        headers = headers_for(
            binding,
            message_id=self.id,
            type=self.type,
            time=self.created_at,
            key=self.key,
            correlation_id=self.correlation_id,
            headers=self.headers,
        )
        return OutgoingMessage(self.payload, self.key, headers, self.id)


class Sink:
    """Publishes prepared messages through a ``Broker`` (connected on first use) or a
    ``RelayTarget``; a run of messages to one topic goes as one windowed batch when the backend
    has ``publish_batch``, which keeps their order."""

    def __init__(self, target: Any) -> None:
        connect = getattr(target, "connect", None)
        if hasattr(target, "backend") and connect is not None:  # a messaging Broker
            self._broker: Any = target
            self._backend: Any = None
        elif isinstance(target, RelayTarget):
            self._broker = None
            self._backend = target
        else:
            raise TypeError(
                "'publisher' must be an interlink.messaging.Broker or have "
                f"async publish(topic, message: OutgoingMessage): {target!r}"
            )

    async def _target(self) -> Any:
        if self._backend is None:
            self._backend = await self._broker.connect()
        return self._backend

    async def send(self, topic: str, messages: Sequence[Prepared]) -> None:
        """Publish ``messages`` (all to ``topic``) in order; returns once all are confirmed."""
        backend = await self._target()
        binding = getattr(backend, "binding", FIELDS)
        if not isinstance(binding, Binding):
            binding = FIELDS
        items = [m.outgoing(binding) for m in messages]
        batch = getattr(backend, "publish_batch", None)
        if batch is not None and len(items) > 1:
            await batch(topic, items)
            return
        for item in items:
            await backend.publish(topic, item)
