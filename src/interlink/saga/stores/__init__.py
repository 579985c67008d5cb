"""Where saga states live: one row per saga, written before every next action.

A row holds the state machine's state as JSON (``interlink.saga.state.state_to_json``) plus the
columns the orchestrators coordinate with: ``status`` (for queries), ``version`` (every write
checks and bumps it), ``owner`` and ``lease_until`` (who drives the saga, until when), and
``wake_at`` (not before: a retry backoff). Every write an orchestrator makes while driving a
saga is *fenced*: it names the owner and the version it read, and changes nothing if either
moved. So an orchestrator that lost its lease can never overwrite the new owner's progress,
and it learns so before it runs the next action.

Backends by URL: ``sqlite:///path.db`` (embedded default, several processes on one machine)
and ``postgresql://...`` (asyncpg; ``FOR UPDATE SKIP LOCKED`` claims).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

__all__ = ["SagaRow", "SagaStore", "SagaWrite"]


@dataclass(frozen=True, slots=True)
class SagaRow:
    """One stored saga, as read: the state JSON is parsed by the caller (it may be corrupt)."""

    saga_id: str
    name: str
    status: str
    state: str
    version: int
    owner: str | None
    lease_until: float
    wake_at: float
    created_at: float
    updated_at: float
    error: str | None
    late: int = 0  # success replies that came after the saga gave up on their step, unhandled


@dataclass(frozen=True, slots=True)
class SagaWrite:
    """What a write of a saga's row sets: the state JSON and the columns derived from it."""

    state: str
    status: str
    wake_at: float
    updated_at: float  # also "now" for the lease checks of a write by hand
    error: str | None


class SagaStore(Protocol):
    """What the orchestrator, the CLI and the tests need from a saga store.

    ``SagaStore.from_url("sqlite:///sagas.db")`` or ``SagaStore.from_url("postgresql://...")``
    opens the built-in ones; any object with these methods will do as well.
    """

    @classmethod
    def from_url(cls, url: str, *, table: str = "interlink_sagas") -> SagaStore:
        """The store for ``sqlite:///path.db`` or ``postgresql://user@host/db`` (not opened
        yet: ``await store.open()``, or let the ``Orchestrator`` open it)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "sqlite":
            module = importlib.import_module("interlink.saga.stores.sqlite")
            sqlite_store: SagaStore = module.SqliteSagaStore(url, table=table)
            return sqlite_store
        if scheme in ("postgresql", "postgres"):
            module = importlib.import_module("interlink.saga.stores.postgres")
            pg_store: SagaStore = module.PostgresSagaStore(url, table=table)
            return pg_store
        raise ValueError(f"'url' must start with sqlite:/// or postgresql://: {scheme}://...")

    async def open(self) -> None:
        """Connect and create the tables if missing; idempotent."""
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...

    async def drop(self) -> None:
        """Delete the tables (tests, teardown)."""
        ...

    async def create(
        self, row: SagaRow, *, owner: str | None, lease_until: float
    ) -> SagaRow | None:
        """Insert a new saga; returns None when one with that id exists already (start is
        idempotent per id: the caller reads the existing one)."""
        ...

    async def save(
        self, saga_id: str, write: SagaWrite, *, owner: str, version: int, release: bool = False
    ) -> bool:
        """Fenced write: only if ``owner`` still owns the row at ``version``; bumps the version.
        With ``release``, gives up ownership in the same write."""
        ...

    async def release(self, saga_id: str, *, owner: str, wake_at: float) -> bool:
        """Give up ownership (fenced by owner); ``wake_at`` says when it is due again."""
        ...

    async def claim(
        self,
        *,
        owner: str,
        names: Collection[str],
        now: float,
        lease_until: float,
        limit: int,
        own: str | None = None,
    ) -> list[SagaRow]:
        """Take up to ``limit`` active sagas of these definitions that are due and free (no
        owner, or an expired lease), and free ones with late replies to deal with; with
        ``own`` (an owner name), the active sagas held under that name (``own`` itself, or
        ``own#...``: any process of that name), due or not, lease or not: what an
        orchestrator resumes when it starts holding the name's owner lock."""
        ...

    async def renew(self, *, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend ``owner``'s lease on ``ids``; returns those it still owns."""
        ...

    async def get(self, saga_id: str) -> SagaRow | None:
        """The row, or None."""
        ...

    async def list(self, *, statuses: Collection[str] | None, limit: int) -> list[SagaRow]:
        """The most recently updated rows, optionally only those with these statuses."""
        ...

    async def park(self, saga_id: str, *, error: str, owner: str | None, now: float) -> bool:
        """Mark a row NEEDS_ATTENTION without touching its state (which may be unreadable);
        fenced by ``owner`` when given, else only if nobody holds a live lease."""
        ...

    async def put_unowned(self, saga_id: str, write: SagaWrite, *, version: int) -> bool:
        """Write a row nobody holds a live lease on (a resume by hand), fenced by version."""
        ...

    async def mark_late(self, saga_id: str) -> None:
        """Count a success reply that came after its step was given up on: the saga becomes
        claimable (even when finished) until ``forget_late`` says it was dealt with."""
        ...

    async def forget_late(self, saga_id: str, count: int) -> None:
        """``count`` late replies were dealt with (later ones stay counted)."""
        ...

    async def hold_owner(self, owner: str) -> bool:
        """Take the lock that says a live process drives sagas as ``owner``, held until
        ``release_owner`` or the process dies (SQLite: a file lock; PostgreSQL: an advisory
        lock on a connection of its own). False when another live process (or another
        orchestrator on this store object) holds it: then the caller must not drive
        ``owner``'s sagas."""
        ...

    async def release_owner(self, owner: str) -> None:
        """Give the owner lock back; idempotent."""
        ...

    async def put_reply(self, saga_id: str, step: str, attempt: int, body: bytes) -> None:
        """Keep the reply to a step's command, as the bytes that arrived (whatever they hold:
        a body that does not parse is judged by the waiting saga, not refused here): the latest
        attempt's wins (a late answer to an earlier attempt never replaces the current
        attempt's)."""
        ...

    async def get_reply(self, saga_id: str, step: str) -> tuple[int, bytes] | None:
        """The reply kept for a step: (attempt it answered, body)."""
        ...

    async def clear_reply(self, saga_id: str, step: str) -> None:
        """Forget the reply kept for a step."""
        ...
