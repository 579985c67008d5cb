"""How the relay and the saga orchestrator hand messages to the broker.

Both publish *prepared* messages: the id, type, key, headers, correlation id and time were fixed
when the outbox row (or the saga command) was written, and must not change when the message is
published again after a crash, or the consumer's idempotency store (the inbox) could not
recognise the duplicate. So they build the interlink message frame themselves and give it to
the backend of an ``interlink.messaging.Broker`` (or to anything with the backend's
``publish``), waiting for the broker's confirmation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from interlink.messaging.envelope import Envelope, OutgoingMessage, encode

__all__ = ["Prepared", "RelayTarget", "Sink"]


@runtime_checkable
class RelayTarget(Protocol):
    """Where the relay (and a saga's ``Send``) can hand prepared messages, besides a
    ``Broker``: anything with a broker backend's confirmed publish of one frame
    (``interlink.messaging.Backend`` has it)."""

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str],
        message_id: str,
    ) -> None: ...


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

    def frame(self) -> bytes:
        """The interlink message frame (``interlink.messaging.envelope``)."""
        return encode(
            Envelope(
                id=self.id,
                type=self.type,
                payload=self.payload,
                key=self.key,
                time=self.created_at,
                correlation_id=self.correlation_id,
                headers=self.headers,
            )
        )


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
                f"async publish(topic, data, *, key, headers, message_id): {target!r}"
            )

    async def _target(self) -> Any:
        if self._backend is None:
            self._backend = await self._broker.connect()
        return self._backend

    async def send(self, topic: str, messages: Sequence[Prepared]) -> None:
        """Publish ``messages`` (all to ``topic``) in order; returns once all are confirmed."""
        backend = await self._target()
        batch = getattr(backend, "publish_batch", None)
        if batch is not None and len(messages) > 1:
            await batch(
                topic,
                [OutgoingMessage(m.frame(), m.key, dict(m.headers), m.id) for m in messages],
            )
            return
        for m in messages:
            await backend.publish(
                topic, m.frame(), key=m.key, headers=dict(m.headers), message_id=m.id
            )
