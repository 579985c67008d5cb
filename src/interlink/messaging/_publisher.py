"""A declared publisher: one message type to one topic, and its entry in the AsyncAPI document.

A module of its own because it is the typed front of ``Broker.publish``, not part of the
broker's machinery; ``broker`` re-exports both names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from interlink.messaging.broker import Broker

__all__ = ["Publisher", "PublisherSpec"]

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
