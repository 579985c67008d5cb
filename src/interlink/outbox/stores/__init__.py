"""The relay's side of the outbox table, one module per database.

Rows are spread over ``partitions`` by a hash of their key, and a relay publishes a partition
only while it holds it: on PostgreSQL a row lock on the partition (``FOR UPDATE SKIP
LOCKED``, held for one batch, gone the moment a relay dies), on SQLite a lease (renewed every
batch, taken over once expired). Inside a partition rows go out in commit order, so messages
with the same key are published in the order they were written, whatever the number of relays.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from interlink.outbox.sink import Prepared

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_PARTITIONS",
    "DEFAULT_TABLE",
    "OutboxStore",
    "PendingMessage",
    "decode_headers",
    "partition_of",
    "unique_owner",
]

DEFAULT_TABLE = "interlink_outbox"
#: Partitions rows are spread over by key; per-key order holds within one.
DEFAULT_PARTITIONS = 16
#: Seconds a dead relay keeps its partitions (SQLite).
DEFAULT_LEASE = 10.0


def unique_owner() -> str:
    """A lease name no other live process uses: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def partition_of(key: str | None, message_id: str, partitions: int) -> int:
    """The partition of a row: by key (same key, same partition, so order holds), by id when
    there is no key (spread evenly)."""
    return zlib.crc32((message_id if key is None else key).encode()) % partitions


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingMessage(Prepared):
    """One outbox row waiting to be published: the message as it was prepared when the row was
    written, and the row's place in the table."""

    seq: int


#: What the built-in stores read of a pending row, in the order of PendingMessage's fields.
COLUMNS = "seq, id, topic, key, type, headers, payload, correlation_id, created_at"


def pending_of(r: Sequence[Any]) -> PendingMessage:
    """The row read as ``SELECT {COLUMNS}``."""
    return PendingMessage(
        seq=int(r[0]),
        id=str(r[1]),
        topic=str(r[2]),
        key=None if r[3] is None else str(r[3]),
        type=str(r[4]),
        headers=decode_headers(r[5]),
        payload=bytes(r[6]),
        correlation_id=None if r[7] is None else str(r[7]),
        created_at=float(r[8]),
    )


class OutboxStore(Protocol):
    """What the relay needs from the database holding the outbox table.

    ``OutboxStore.from_url(url)`` opens the built-in ones (SQLite, PostgreSQL); the relay does
    it for you when given a URL.
    """

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        table: str = DEFAULT_TABLE,
        owner: str | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        lease: float = DEFAULT_LEASE,
        listen: bool = True,
    ) -> OutboxStore:
        """The store for ``sqlite:///path.db`` or ``postgresql://...`` (not opened yet).
        ``owner`` (SQLite: the name partition leases are held under; default unique per
        process), ``lease`` (SQLite: how long a dead relay keeps its partitions) and ``listen``
        (PostgreSQL: wake on ``NOTIFY``) apply to one backend each."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "sqlite":
            module = importlib.import_module("interlink.outbox.stores.sqlite")
            sqlite_store: OutboxStore = module.SqliteOutboxStore(
                url,
                table=table,
                owner=owner or unique_owner(),
                partitions=partitions,
                lease=lease,
            )
            return sqlite_store
        if scheme in ("postgresql", "postgres"):
            module = importlib.import_module("interlink.outbox.stores.postgres")
            pg_store: OutboxStore = module.PostgresOutboxStore(
                url, table=table, partitions=partitions, listen=listen
            )
            return pg_store
        raise ValueError(f"'url' must start with sqlite:/// or postgresql://: {scheme}://...")

    async def open(self) -> None:
        """Connect and create the tables if missing; idempotent."""
        ...

    async def close(self) -> None:
        """Give up held partitions and close connections; idempotent."""
        ...

    async def drop(self) -> None:
        """Delete the tables (tests, teardown)."""
        ...

    async def fetch(self, limit: int) -> tuple[Any, list[PendingMessage]]:
        """Take partitions and read up to ``limit`` of their pending rows in order; returns a
        claim handle (pass it to ``complete`` or ``abandon``) and the rows."""
        ...

    async def complete(self, claim: Any, seqs: Sequence[int]) -> int:
        """Mark ``seqs`` sent (if the partitions are still ours) and end the claim; returns
        how many were marked."""
        ...

    async def abandon(self, claim: Any) -> None:
        """End the claim without marking anything."""
        ...

    async def wait(self, max_wait: float) -> bool:
        """Wait up to ``max_wait`` s for new rows; True if woken by a notification."""
        ...

    async def lag(self) -> float:
        """Seconds since the oldest pending row was written (0.0 when none is pending)."""
        ...

    async def pending(self) -> int:
        """Rows not yet published."""
        ...

    async def cleanup(self, older_than: float) -> int:
        """Delete rows sent more than ``older_than`` seconds ago; returns how many."""
        ...


def decode_headers(raw: Any) -> dict[str, str]:
    """Headers as stored (a JSON object) back to a dict."""
    if raw is None:
        return {}
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return {str(k): str(v) for k, v in dict(value).items()}
