"""The shape the server backends share: one connection object, DLQ functions over it.

``client_library`` guards the import of a server backend's client library.
``ServerConnection`` is the base of the connection objects that dial a server (NATS,
RabbitMQ), ``Received`` of every backend's delivery. ``letter_of`` is every backend's dead
letter of a delivery, ``stored_letter`` reads one back from a DLQ record, and ``replays``
decides what a ``dlq_replay`` publishes again and removes.

A server backend (Kafka, NATS, RabbitMQ, Redis) keeps everything about its link to the server
in one connection object (the URL's options, the client, ``connect`` and ``aclose``) and its
dead-letter queue in a module of functions taking that object (``dlq_list(connection, topic,
limit)``, ``dlq_replay``, ``dlq_purge``, ``dlq_count``, ``topics``). ``ConnectionBackend`` is the
facade over both that the ``Backend`` protocol asks for; a backend adds publishing and
subscribing, and overrides what its server does differently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import ClassVar, Generic, Protocol, Self, TypeVar

from interlink.messaging.backend import BackendUnavailable, Delivery, redact
from interlink.messaging.envelope import (
    Binding,
    DeadLetter,
    Envelope,
    EnvelopeError,
    decode_dead_letter,
    letter_for,
    with_id,
)

__all__ = [
    "ConnectionBackend",
    "Received",
    "Replay",
    "ServerConnection",
    "UrlBackend",
    "client_library",
    "letter_of",
    "replays",
    "stored_letter",
]


@contextmanager
def client_library(scheme: str, package: str, extra: str) -> Iterator[None]:
    """Around a backend's imports of its client library: an ``ImportError`` (the extra is not
    installed) becomes one saying which package the ``scheme://`` backend needs and the
    ``pip install`` line that brings it."""
    try:
        yield
    except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
        raise ImportError(
            f"interlink.messaging's {scheme}:// backend needs {package}: "
            f"pip install 'interlink[{extra}]'"
        ) from exc


class Received:
    """What a backend's delivery holds of its message (the data of the ``Delivery``
    protocol): the ``raw`` body and native ``headers`` as received, the ``envelope`` read
    from them and the ``attempt``. Each backend's delivery class adds how it settles."""

    __slots__ = ("attempt", "envelope", "headers", "raw")

    attempt: int
    envelope: Envelope
    headers: Mapping[str, str]
    raw: bytes


B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Subscribed(Generic[B]):
    """A subscription as its deliveries see it: the ``backend`` connection they settle
    through, the ``topic`` and the ``group``. Made once per subscription; a delivery holds it
    (as ``_sub``, like the SQLite, Redis and Kafka deliveries their subscription) instead of a
    copy of each."""

    backend: B
    topic: str
    group: str


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


def stored_letter(data: bytes, log: logging.Logger, where: str) -> DeadLetter | None:
    """The dead letter of a DLQ record, or None (and a warning naming ``where``) for a record
    that is not one: something else written to the DLQ must not stop listing or replaying."""
    try:
        return decode_dead_letter(data)
    except EnvelopeError:
        log.warning("%s holds a record that is not a dead letter", where)
        return None


H = TypeVar("H")


@dataclass(slots=True)
class Replay(Generic[H]):
    """One message a DLQ replay publishes again: the oldest chosen ``letter`` holding its id,
    the ``headers`` to publish it with (its id restored, see ``envelope.with_id``), and the
    ``handles`` of every chosen letter holding that id, which go once it is published."""

    letter: DeadLetter
    headers: dict[str, str]
    handles: list[H]


def replays(
    letters: Iterable[tuple[H, DeadLetter]], ids: Sequence[str] | None, binding: Binding
) -> list[Replay[H]]:
    """The replays of ``letters`` ((handle, letter) pairs, oldest first) whose id is in ``ids``
    (all when None): one per message id, however many letters hold it, in first-seen order."""
    wanted = None if ids is None else set(ids)
    by_id: dict[str, Replay[H]] = {}
    for handle, letter in letters:
        if wanted is not None and letter.id not in wanted:
            continue
        replay = by_id.get(letter.id)
        if replay is None:
            headers = with_id(binding, letter.headers, letter.id)
            by_id[letter.id] = Replay(letter, headers, [handle])
        else:
            replay.handles.append(handle)
    return list(by_id.values())


T = TypeVar("T")


class ServerConnection:
    """A link to a server that ``connect`` opens once, however many tasks ask at the same
    time: the first dials (``_dial``) under a lock, the others wait for it and find the link
    open (``_open``). What exists only while connected is ``require``d."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = asyncio.Lock()

    def _open(self) -> bool:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def _dial(self) -> None:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    async def connect(self) -> None:
        """Connect (once)."""
        if self._open():
            return
        async with self._lock:
            if not self._open():  # (connected while this call waited for the lock)
                await self._dial()

    def require(self, handle: T | None) -> T:
        """``handle``; ``BackendUnavailable`` when it is None (not connected)."""
        if handle is None:
            raise BackendUnavailable(redact(self._url), "not connected")
        return handle


class _Connection(Protocol):
    async def connect(self) -> object: ...

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=_Connection)


class UrlBackend:
    """What every backend class has: the URL ``scheme`` it serves, the ``binding`` of the
    CloudEvents attributes to its native headers, and ``from_url``."""

    scheme: ClassVar[str]
    binding: ClassVar[Binding]

    def __init__(self, url: str) -> None:
        """A backend is made from its URL alone: its options ride in the query."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The backend for ``url`` (not yet connected)."""
        return cls(url)


class ConnectionBackend(UrlBackend, Generic[C]):
    """A backend over one connection object (``connection``, made by ``_open``) and the
    module of DLQ functions ``dlq``."""

    dlq: ClassVar[ModuleType]

    def __init__(self, url: str) -> None:
        self.connection: C = self._open(url)

    def _open(self, url: str) -> C:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

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
