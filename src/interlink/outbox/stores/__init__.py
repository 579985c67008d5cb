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
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TABLE",
    "PendingMessage",
    "RelayStore",
    "decode_headers",
    "partition_of",
    "store_from_url",
]

DEFAULT_TABLE = "interlink_outbox"


def partition_of(key: str | None, message_id: str, partitions: int) -> int:
    """The partition of a row: by key (same key, same partition, so order holds), by id when
    there is no key (spread evenly)."""
    return zlib.crc32((message_id if key is None else key).encode()) % partitions


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """One outbox row waiting to be published."""

    seq: int
    id: str
    topic: str
    key: str | None
    type: str
    headers: Mapping[str, str]
    payload: bytes
    correlation_id: str | None
    created_at: float


class RelayStore(Protocol):
    """What the relay needs from the database holding the outbox table."""

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


def store_from_url(
    url: str,
    *,
    table: str = DEFAULT_TABLE,
    owner: str,
    partitions: int,
    lease: float,
    listen: bool,
) -> RelayStore:
    """The store for ``sqlite:///path.db`` or ``postgresql://...`` (not opened yet)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        module = importlib.import_module("interlink.outbox.stores.sqlite")
        sqlite_store: RelayStore = module.SqliteRelayStore(
            url,
            table=table,
            owner=owner,
            partitions=partitions,
            lease=lease,
        )
        return sqlite_store
    if scheme in ("postgresql", "postgres"):
        module = importlib.import_module("interlink.outbox.stores.postgres")
        pg_store: RelayStore = module.PostgresRelayStore(
            url,
            table=table,
            partitions=partitions,
            listen=listen,
        )
        return pg_store
    raise ValueError(f"'url' must start with sqlite:/// or postgresql://: {scheme}://...")


def decode_headers(raw: Any) -> dict[str, str]:
    """Headers as stored (a JSON object) back to a dict."""
    if raw is None:
        return {}
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    return {str(k): str(v) for k, v in dict(value).items()}
