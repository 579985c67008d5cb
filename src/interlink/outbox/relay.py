"""The relay: publishes committed outbox rows, with the broker's confirmation, then marks them
sent.

Delivery is at least once: a relay that dies after the broker confirmed but before the rows were
marked publishes them again, under the same message ids, and the consumer's idempotency store
(``@broker.subscriber(..., idempotent=True)``, the inbox) drops the second copy, so effects
happen once. Rows are never lost: a row is marked sent only after its confirmation.

Each batch takes the partitions no other relay holds, reads up to ``batch_size`` of their
pending rows in commit order, and publishes them one windowed batch per topic (topics in
parallel, each in order, so messages of one key keep their order). Run as many relays as you
like: on PostgreSQL they take turns batch by batch (``FOR UPDATE SKIP LOCKED``), on SQLite one
holds the partitions while it lives and another takes over when its lease lapses.

Between batches the relay waits for new rows: on PostgreSQL ``LISTEN`` wakes it the moment a
transaction with outbox rows commits (``poll_interval`` is the fallback when the listening
connection is down); on SQLite it polls every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from interlink._closing import AsyncOpening
from interlink.clock import Clock
from interlink.outbox.sink import Sink
from interlink.outbox.stores import (
    DEFAULT_LEASE,
    DEFAULT_PARTITIONS,
    DEFAULT_TABLE,
    OutboxStore,
    PendingMessage,
    unique_owner,
)
from interlink.resilience._validate import positive, positive_int
from interlink.resilience.retry import Retry

__all__ = ["PUBLISH_RETRY", "OutboxRelay", "RelayStats"]

log = logging.getLogger("interlink.outbox")

#: Backoff between failed batches (broker or database down): 0.1 s doubling to 10 s, forever.
PUBLISH_RETRY = Retry(retries=2**31, backoff=0.1, max_backoff=10.0, name="outbox.relay")


@dataclass(slots=True)
class RelayStats:
    """Counters since the relay started (read them for metrics)."""

    published: int = 0
    batches: int = 0
    failures: int = 0
    last_error: str | None = None
    last_batch_at: float | None = None


class OutboxRelay(AsyncOpening):
    """Publishes the outbox table at ``store`` (a URL or a ``OutboxStore``) through
    ``publisher`` (an ``interlink.messaging.Broker``, or a ``RelayTarget``).

    ``retention``: seconds sent rows are kept before ``cleanup`` (run every
    ``cleanup_interval`` s by ``run``) deletes them. ``lease`` (SQLite): how long a dead relay
    keeps its partitions. ``owner``: this relay's name for its leases (unique among live relays;
    a restart under the same name takes its leases back at once).
    """

    def __init__(
        self,
        store: OutboxStore | str,
        publisher: Any,
        *,
        table: str = DEFAULT_TABLE,
        partitions: int = DEFAULT_PARTITIONS,
        batch_size: int = 200,
        poll_interval: float | None = None,
        listen: bool = True,
        lease: float = DEFAULT_LEASE,
        owner: str | None = None,
        retention: float = 24 * 3600.0,
        cleanup_interval: float = 300.0,
        retry: Retry = PUBLISH_RETRY,
        clock: Clock = time.monotonic,
    ) -> None:
        self._owner = owner or unique_owner()
        positive_int("partitions", partitions)
        positive("lease", lease)
        if isinstance(store, str):
            postgres = urlsplit(store).scheme.lower() in ("postgresql", "postgres")
            if poll_interval is None:
                poll_interval = 1.0 if postgres and listen else 0.1
            store = OutboxStore.from_url(
                store,
                table=table,
                owner=self._owner,
                partitions=partitions,
                lease=lease,
                listen=listen,
            )
        self._store: OutboxStore = store
        self._sink = Sink(publisher)
        self._batch = positive_int("batch_size", batch_size)
        self._poll = positive("poll_interval", 0.1 if poll_interval is None else poll_interval)
        self._retention = positive("retention", retention)
        self._cleanup_every = positive("cleanup_interval", cleanup_interval)
        self._retry = retry
        self._clock = clock
        self._opened = False
        self.stats = RelayStats()

    @property
    def store(self) -> OutboxStore:
        """The store the relay reads."""
        return self._store

    async def open(self) -> None:
        """Connect and create the tables if missing; idempotent."""
        if not self._opened:
            await self._store.open()
            self._opened = True

    async def aclose(self) -> None:
        """Release partitions and connections."""
        if self._opened:
            self._opened = False
            await self._store.close()

    async def lag(self) -> float:
        """Seconds the oldest unpublished row has waited (0.0 when none): the relay's lag."""
        return await self._store.lag()

    async def pending(self) -> int:
        """Rows not published yet."""
        return await self._store.pending()

    async def cleanup(self, older_than: float | None = None) -> int:
        """Delete rows sent more than ``older_than`` (default ``retention``) seconds ago."""
        return await self._store.cleanup(self._retention if older_than is None else older_than)

    async def relay_once(self) -> int:
        """Publish one batch; returns how many rows were published and marked sent. Raises the
        first publish error after marking what did get through."""
        return (await self._once())[1]

    async def _once(self) -> tuple[int, int]:
        claim, rows = await self._store.fetch(self._batch)
        if not rows:
            return 0, 0
        topics: dict[str, list[PendingMessage]] = {}
        for row in rows:
            topics.setdefault(row.topic, []).append(row)
        try:
            outcomes = await asyncio.gather(
                *(self._sink.send(t, ms) for t, ms in topics.items()),
                return_exceptions=True,
            )
        except BaseException:
            await self._store.abandon(claim)
            raise
        confirmed: list[int] = []
        error: BaseException | None = None
        for (_, messages), outcome in zip(topics.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):
                error = error or outcome
            else:
                confirmed.extend(m.seq for m in messages)
        done = await self._store.complete(claim, confirmed)
        self.stats.published += done
        self.stats.batches += 1
        self.stats.last_batch_at = self._clock()
        if error is not None:
            raise error
        return len(rows), done

    async def run(self) -> None:
        """Relay until cancelled: batches back to back while rows wait, then wait for more;
        back off (``retry``'s schedule) while the broker or the database fails."""
        await self.open()
        failures, delay = 0, 0.0
        next_cleanup = self._clock() + self._cleanup_every
        try:
            while True:
                try:
                    fetched, _ = await self._once()
                    if self._clock() >= next_cleanup:
                        next_cleanup = self._clock() + self._cleanup_every
                        await self.cleanup()
                except Exception as exc:
                    self.stats.failures += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("outbox relay batch failed: %s", self.stats.last_error)
                    try:
                        delay = self._retry.next_delay(failures, exc, delay)
                    except Exception:
                        delay = self._poll
                    failures += 1
                    await self._retry.asleep(delay)
                    continue
                failures, delay = 0, 0.0
                if fetched < self._batch:
                    await self._store.wait(self._poll)
        finally:
            await self.aclose()

    def describe(self) -> dict[str, object]:
        """The settings, for logs."""
        return {"batch_size": self._batch, "poll_interval": self._poll, "owner": self._owner}
