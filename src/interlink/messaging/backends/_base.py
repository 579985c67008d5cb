"""The shape the server backends share: one connection object, DLQ functions over it.

``letter_of`` is every backend's dead letter of a delivery.

A server backend (Kafka, NATS, RabbitMQ, Redis) keeps everything about its link to the server
in one connection object (the URL's options, the client, ``connect`` and ``aclose``) and its
dead-letter queue in a module of functions taking that object (``dlq_list(connection, topic,
limit)``, ``dlq_replay``, ``dlq_purge``, ``dlq_count``, ``topics``). ``ConnectionBackend`` is the
facade over both that the ``Backend`` protocol asks for; a backend adds publishing and
subscribing, and overrides what its server does differently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import ModuleType
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from interlink.messaging.backend import Delivery
from interlink.messaging.envelope import Binding, DeadLetter, letter_for

__all__ = ["ConnectionBackend", "letter_of"]


def letter_of(  # noqa: PLR0917 - what every backend's dead_letter has at hand
    delivery: Delivery,
    topic: str,
    group: str,
    reason: str,
    error_type: str | None,
    binding: Binding,
    drop: frozenset[str] = frozenset(),
) -> DeadLetter:
    """The dead letter of ``delivery`` of ``topic`` for ``group``, dead now: its body and
    headers as received (``binding``'s, without the ``drop``ped names: see
    ``envelope.letter_for``), the reason, the error type and its attempts."""
    return letter_for(
        delivery.envelope,
        topic=topic,
        group=group,
        body=delivery.raw,
        headers=delivery.headers,
        reason=reason,
        error_type=error_type,
        attempts=delivery.attempt,
        dead_at=time.time(),
        binding=binding,
        drop=drop,
    )


class _Connection(Protocol):
    async def connect(self) -> object: ...

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Connection)


class ConnectionBackend(Generic[C]):
    """A backend over one connection object (``connection``, made by ``_open``) and the
    module of DLQ functions ``dlq``."""

    scheme: ClassVar[str]
    binding: ClassVar[Binding]
    dlq: ClassVar[ModuleType]

    def __init__(self, url: str) -> None:
        self.connection: C = self._open(url)

    def _open(self, url: str) -> C:
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The backend for ``url`` (not yet connected)."""
        return cls(url)

    async def connect(self) -> None:
        """Connect (once)."""
        await self.connection.connect()

    async def aclose(self) -> None:
        """Flush what is pending and close the connection."""
        await self.connection.aclose()

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters of ``topic``."""
        letters: list[DeadLetter] = await self.dlq.dlq_list(self.connection, topic, limit)
        return letters

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish each chosen message once (however many letters hold its id), then
        remove its letters from the DLQ."""
        count: int = await self.dlq.dlq_replay(self.connection, topic, ids)
        return count

    async def dlq_purge(self, topic: str) -> int:
        """Drop every dead letter of ``topic``; how many there were."""
        count: int = await self.dlq.dlq_purge(self.connection, topic)
        return count

    async def dlq_count(self, topic: str) -> int:
        """How many dead letters ``topic`` holds."""
        count: int = await self.dlq.dlq_count(self.connection, topic)
        return count

    async def topics(self) -> list[str]:
        """The topics the server knows, DLQs included, sorted."""
        names: list[str] = await self.dlq.topics(self.connection)
        return names
