"""An in-process broker that behaves like a real one, for tests.

``memory://`` gives the broker its own private hub; ``memory://NAME`` shares the hub ``NAME``
between every backend of the process that opens it (a publisher broker and a consumer broker
in one test). It keeps the semantics the other backends promise, so tests on it mean
something:

- a message is redelivered after ``nack(delay)`` once the delay has passed, with attempt + 1;
- a delivery's ``ack``/``nack``/``dead_letter`` after it was taken back is a no-op;
- per key, a group gets a message only after the previous one of that key is acked or
  dead-lettered (strict FIFO per key, also across retries and competing consumers);
- ``crash()`` models a consumer process dying: its deliveries are neither acked nor released,
  and come back only when the visibility timeout (``?visibility=30`` seconds) has expired,
  with attempt + 1. ``aclose()`` (a clean stop) releases them at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from interlink.messaging.backend import ConsumerLag
from interlink.messaging.backends._base import Received, UrlBackend, letter_of, replays
from interlink.messaging.backends._options import DLQ_MAX_AGE, DLQ_MAX_COUNT
from interlink.messaging.backends._wait import sleep_or_wake
from interlink.messaging.envelope import (
    FIELDS,
    Binding,
    DeadLetter,
    Envelope,
    OutgoingMessage,
    read,
)
from interlink.resilience._validate import positive

__all__ = ["MemoryBackend"]

_NEVER = float("inf")


@dataclass(slots=True)
class _Entry:
    seq: int
    data: bytes
    key: str | None
    message_id: str
    headers: Mapping[str, str]
    visible_at: float = 0.0
    attempt: int = 0
    lease: object = None
    owner: MemoryBackend | None = None
    envelope: Envelope | None = None


@dataclass(slots=True)
class _Group:
    name: str
    entries: dict[int, _Entry] = field(default_factory=dict)
    heads: dict[str, deque[int]] = field(default_factory=dict)
    waiters: set[asyncio.Event] = field(default_factory=set)

    def add(self, entry: _Entry) -> None:
        self.entries[entry.seq] = entry
        if entry.key is not None:
            self.heads.setdefault(entry.key, deque()).append(entry.seq)
        self.wake()

    def remove(self, entry: _Entry) -> None:
        del self.entries[entry.seq]
        if entry.key is not None:
            heads = self.heads[entry.key]
            heads.remove(entry.seq)
            if not heads:
                del self.heads[entry.key]
        self.wake()

    def wake(self) -> None:
        for event in self.waiters:
            event.set()


@dataclass(slots=True)
class _Topic:
    groups: dict[str, _Group] = field(default_factory=dict)
    backlog: list[_Entry] = field(default_factory=list)  # published before any group existed
    dlq: list[DeadLetter] = field(default_factory=list)
    has_dlq: bool = False


class _Hub:
    """The broker's state; shared by the backends that open the same ``memory://NAME``."""

    def __init__(self) -> None:
        self.topics: dict[str, _Topic] = {}
        self.seq = itertools.count(1)

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic()
        return topic


# Named hubs live as long as some backend uses them: tests get a fresh broker per name.
_HUBS: weakref.WeakValueDictionary[str, _Hub] = weakref.WeakValueDictionary()


class _Delivery(Received):
    __slots__ = (
        "_backend",
        "_entry",
        "_group",
        "_lease",
        "_topic",
    )

    def __init__(self, backend: MemoryBackend, topic: str, group: _Group, entry: _Entry) -> None:
        self._backend = backend
        self._topic = topic
        self._group = group
        self._entry = entry
        self._lease = entry.lease
        self.attempt = entry.attempt
        self.raw = entry.data
        self.headers = entry.headers
        if entry.envelope is None:
            entry.envelope = read(FIELDS, entry.data, entry.headers, fallback_id=entry.message_id)
        self.envelope = entry.envelope

    def _current(self) -> bool:
        entry = self._entry
        return (
            self._backend.alive
            and entry.lease is self._lease
            and self._group.entries.get(entry.seq) is entry
        )

    async def ack(self) -> None:
        if self._current():
            self._group.remove(self._entry)

    async def nack(self, delay: float) -> None:
        if self._current():
            entry = self._entry
            entry.lease = None
            entry.owner = None
            entry.visible_at = time.monotonic() + max(delay, 0.0)
            self._group.wake()

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if not self._current():
            return
        self._group.remove(self._entry)
        backend = self._backend
        topic = backend.hub.topic(self._topic)
        topic.has_dlq = True
        oldest = time.time() - backend.dlq_max_age  # the retention: age, then count
        kept = [d for d in topic.dlq if d.dead_at >= oldest]
        topic.dlq = kept[max(len(kept) - backend.dlq_max_count + 1, 0) :]
        topic.dlq.append(letter_of(self, self._topic, self._group.name, reason, error_type, FIELDS))


class MemoryBackend(UrlBackend):
    """The in-process backend (see the module docstring)."""

    scheme: ClassVar[str] = "memory"
    binding: ClassVar[Binding] = FIELDS

    def __init__(self, url: str = "memory://", *, visibility_timeout: float | None = None):
        parts = urlsplit(url)
        name = parts.netloc + parts.path
        query = parse_qs(parts.query)
        if visibility_timeout is None:
            visibility_timeout = float(query.get("visibility", ["30"])[0])
        self.visibility_timeout = positive("visibility_timeout", visibility_timeout)
        self.dlq_max_age = positive(
            "dlq_max_age", float(query.get("dlq_max_age", [DLQ_MAX_AGE])[0])
        )
        self.dlq_max_count = int(
            positive("dlq_max_count", int(query.get("dlq_max_count", [DLQ_MAX_COUNT])[0]))
        )
        if name:
            hub = _HUBS.get(name)
            if hub is None:
                hub = _Hub()
                _HUBS[name] = hub
        else:
            hub = _Hub()
        self.hub = hub
        self.alive = True

    async def connect(self) -> None:
        """Nothing to connect; a crashed backend stays crashed."""

    async def aclose(self) -> None:
        """A clean stop: deliveries this backend still holds are released at once."""
        now = time.monotonic()
        for topic in self.hub.topics.values():
            for group in topic.groups.values():
                for entry in group.entries.values():
                    if entry.owner is self:
                        entry.lease, entry.owner, entry.visible_at = None, None, now
                group.wake()

    def crash(self) -> None:
        """Die like a killed process: no more acks, nothing released; other consumers get
        the held messages once the visibility timeout has passed."""
        self.alive = False
        for topic in self.hub.topics.values():
            for group in topic.groups.values():
                group.wake()

    # -- publishing ---------------------------------------------------------------------

    def _store(
        self, topic: str, data: bytes, key: str | None, message_id: str, headers: Mapping[str, str]
    ) -> None:
        if not self.alive:
            raise ConnectionError("the memory backend crashed")
        state = self.hub.topic(topic)
        seq = next(self.hub.seq)
        if not state.groups:
            state.backlog.append(_Entry(seq, data, key, message_id, headers))
        for group in state.groups.values():
            group.add(_Entry(seq, data, key, message_id, headers))

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Store at once (memory is as durable as it gets here)."""
        self._store(topic, message.data, message.key, message.message_id, message.headers)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Store all at once."""
        for item in items:
            self._store(topic, item.data, item.key, item.message_id, item.headers)

    # -- consuming ----------------------------------------------------------------------

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the group; the topic's first group takes over what was published before."""
        state = self.hub.topic(topic)
        if group not in state.groups:
            new = state.groups[group] = _Group(group)
            backlog, state.backlog = state.backlog, []
            for entry in backlog:
                new.add(entry)

    def _next(self, group: _Group, now: float) -> tuple[_Entry | None, float]:
        """The deliverable entry with the lowest sequence, else when to look again."""
        wake = _NEVER
        heads = group.heads
        for entry in group.entries.values():
            if entry.key is not None and heads[entry.key][0] != entry.seq:
                continue
            if entry.lease is not None:
                owner = entry.owner
                if owner is not None and owner.alive:
                    continue  # a live consumer holds it
            if entry.visible_at <= now:
                return entry, now
            wake = min(wake, entry.visible_at)
        return None, wake

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[_Delivery]:
        """Deliveries for ``group``, one at a time (prefetch has nothing to save in memory)."""
        await self.ensure_group(topic, group)
        state = self.hub.topic(topic).groups[group]
        event = asyncio.Event()
        state.waiters.add(event)
        try:
            while self.alive:
                now = time.monotonic()
                entry, wake = self._next(state, now)
                if entry is None:
                    event.clear()
                    await sleep_or_wake(event, None if wake == _NEVER else max(wake - now, 0.0))
                    continue
                entry.attempt += 1
                entry.lease = object()
                entry.owner = self
                entry.visible_at = now + self.visibility_timeout
                yield _Delivery(self, topic, state, entry)
        finally:
            state.waiters.discard(event)

    # -- the DLQ --------------------------------------------------------------------------

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        state = self.hub.topics.get(topic)
        return [] if state is None else state.dlq[:limit]

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish (same bytes, same id) and remove, in one step."""
        state = self.hub.topics.get(topic)
        if state is None:
            return 0
        chosen = replays(enumerate(state.dlq), ids, FIELDS)
        gone = {i for replay in chosen for i in replay.handles}
        state.dlq = [d for i, d in enumerate(state.dlq) if i not in gone]
        for replay in chosen:
            headers, letter = replay.headers, replay.letter
            self._store(topic, letter.data, headers.get(FIELDS.key), letter.id, headers)
        return len(chosen)

    async def groups(self, topic: str) -> list[str]:
        """The topic's groups."""
        state = self.hub.topics.get(topic)
        return [] if state is None else sorted(state.groups)

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """The group's unacknowledged entries (no publish times are kept: no age)."""
        state = self.hub.topics.get(topic)
        entries = None if state is None else state.groups.get(group)
        return ConsumerLag(
            topic=topic, group=group, pending=0 if entries is None else len(entries.entries)
        )

    async def dlq_count(self, topic: str) -> int:
        """How many dead letters ``topic`` holds."""
        state = self.hub.topics.get(topic)
        return 0 if state is None else len(state.dlq)

    async def dlq_purge(self, topic: str) -> int:
        """Drop them all."""
        state = self.hub.topics.get(topic)
        if state is None:
            return 0
        count, state.dlq = len(state.dlq), []
        return count

    async def topics(self) -> list[str]:
        """Every topic published to or subscribed, and every DLQ that was used."""
        names = set(self.hub.topics)
        names.update(f"{n}.dlq" for n, t in self.hub.topics.items() if t.has_dlq)
        return sorted(names)
