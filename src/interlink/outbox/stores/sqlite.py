"""The outbox on SQLite: the table, and the relay's side of it, with partition leases.

SQLite has one write lock per database and no row locks, so a relay holds its partitions by
lease: ``{table}_leases`` has one row per partition with its owner and expiry. Every batch
renews the leases it holds (a write every ``lease / 3`` seconds at most) and marks rows sent
only after checking, in the same transaction, that the leases are still its own: a relay that
stalled past its lease publishes a duplicate at worst (the inbox absorbs it), never out of
order with the relay that took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from interlink._sqlite_thread import SqliteThread, identifier, sqlite_path, write_tx
from interlink.outbox.stores import COLUMNS, OutboxStore, PendingMessage, pending_of

__all__ = ["SqliteOutboxStore", "ddl", "insert_sql"]

_CLEANUP_CHUNK = 5000


def ddl(table: str, partitions: int) -> list[str]:
    """The statements creating the outbox table, its indexes and its lease rows."""
    t = identifier("table", table)
    leases = ",".join(f"({p})" for p in range(partitions))
    return [
        f"CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "id TEXT NOT NULL, topic TEXT NOT NULL, key TEXT, part INTEGER NOT NULL, "
        "type TEXT NOT NULL, headers TEXT NOT NULL, payload BLOB NOT NULL, correlation_id TEXT, "
        "created_at REAL NOT NULL, sent_at REAL)",
        f"CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (seq) WHERE sent_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {t}_sent ON {t} (sent_at) WHERE sent_at IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {t}_leases (part INTEGER PRIMARY KEY, owner TEXT, "
        "expires_at REAL NOT NULL DEFAULT 0)",
        f"INSERT OR IGNORE INTO {t}_leases (part) VALUES {leases}",
    ]


def insert_sql(table: str, mark: str = "?") -> str:
    """The INSERT of one outbox row (``mark``: the driver's placeholder)."""
    marks = ", ".join([mark] * 9)
    return (
        f"INSERT INTO {table} (id, topic, key, part, type, headers, payload, correlation_id, "
        f"created_at) VALUES ({marks})"
    )


class SqliteOutboxStore(OutboxStore):
    """The relay's view of the outbox table in the SQLite file named by ``url``."""

    def __init__(
        self,
        url: str,
        *,
        table: str,
        owner: str,
        partitions: int,
        lease: float,
        synchronous: str = "NORMAL",
    ) -> None:
        self._t = identifier("table", table)
        self._owner = owner
        self._partitions = partitions
        self._lease = lease
        self._db = SqliteThread(sqlite_path(url), synchronous=synchronous)
        self._owned: tuple[int, ...] = ()
        self._renew_at = 0.0

    async def open(self) -> None:
        """Create the tables if missing."""
        await self._db.write_all(ddl(self._t, self._partitions))

    async def close(self) -> None:
        """Release the leases at once (a successor need not wait them out) and close."""
        t, owner = self._t, self._owner
        sql = f"UPDATE {t}_leases SET owner=NULL, expires_at=0 WHERE owner=?"
        with contextlib.suppress(sqlite3.Error):
            await self._db.write(sql, (owner,))
        self._owned = ()
        await self._db.close()

    async def drop(self) -> None:
        """Delete the tables."""
        t = self._t
        await self._db.write_all([f"DROP TABLE IF EXISTS {t}", f"DROP TABLE IF EXISTS {t}_leases"])

    def _claim(self, conn: sqlite3.Connection, now: float) -> tuple[int, ...]:
        if self._owned and now < self._renew_at:
            return self._owned
        t, owner = self._t, self._owner
        with write_tx(conn):
            rows = conn.execute(
                f"UPDATE {t}_leases SET owner=?, expires_at=? WHERE part IN (SELECT part FROM "
                f"{t}_leases WHERE owner=? OR owner IS NULL OR expires_at < ? "
                ") RETURNING part",
                (owner, now + self._lease, owner, now),
            ).fetchall()
        self._owned = tuple(sorted(int(r[0]) for r in rows))
        self._renew_at = now + self._lease / 3
        return self._owned

    async def fetch(self, limit: int) -> tuple[Any, list[PendingMessage]]:
        """Renew or take leases, then read the pending rows of the partitions held."""
        t = self._t
        every = self._partitions

        def fetch(conn: sqlite3.Connection) -> tuple[Any, list[PendingMessage]]:
            owned = self._claim(conn, time.time())
            if not owned:
                return owned, []
            if len(owned) == every:
                sql = f"SELECT {COLUMNS} FROM {t} WHERE sent_at IS NULL ORDER BY seq LIMIT ?"
                args: tuple[Any, ...] = (limit,)
            else:
                marks = ",".join("?" * len(owned))
                sql = (
                    f"SELECT {COLUMNS} FROM {t} WHERE sent_at IS NULL AND part IN ({marks}) "
                    "ORDER BY seq LIMIT ?"
                )
                args = (*owned, limit)
            return owned, [pending_of(r) for r in conn.execute(sql, args).fetchall()]

        return await self._db.run(fetch)

    async def complete(self, claim: Any, seqs: Sequence[int]) -> int:
        """Mark sent, if every partition of the claim is still leased to this relay."""
        if not seqs:
            return 0
        t, owner, owned = self._t, self._owner, tuple(claim)

        def complete(conn: sqlite3.Connection) -> int:
            now = time.time()
            marks = ",".join("?" * len(owned))
            with write_tx(conn):
                held = conn.execute(
                    f"SELECT count(*) FROM {t}_leases WHERE owner=? AND expires_at > ? "
                    f"AND part IN ({marks})",
                    (owner, now, *owned),
                ).fetchone()[0]
                if held != len(owned):
                    self._owned = ()
                    return 0
                done = 0
                for start in range(0, len(seqs), 500):
                    chunk = seqs[start : start + 500]
                    done += conn.execute(
                        f"UPDATE {t} SET sent_at=? WHERE seq IN ({','.join('?' * len(chunk))}) "
                        "AND sent_at IS NULL",
                        (now, *chunk),
                    ).rowcount
                return done

        return await self._db.run(complete)

    async def abandon(self, claim: Any) -> None:
        """Nothing to undo: the rows stay pending, the leases stay held."""

    async def wait(self, max_wait: float) -> bool:
        """SQLite cannot notify across processes: poll."""
        await asyncio.sleep(max_wait)
        return False

    async def lag(self) -> float:
        """Age of the oldest pending row."""
        sql = f"SELECT min(created_at) FROM {self._t} WHERE sent_at IS NULL"
        oldest = await self._db.run(lambda c: c.execute(sql).fetchone()[0])
        return 0.0 if oldest is None else max(time.time() - float(oldest), 0.0)

    async def pending(self) -> int:
        """Rows not yet sent."""
        sql = f"SELECT count(*) FROM {self._t} WHERE sent_at IS NULL"
        return int(await self._db.run(lambda c: c.execute(sql).fetchone()[0]))

    async def cleanup(self, older_than: float) -> int:
        """Delete sent rows in chunks, so writers are never held up for long."""
        t = self._t
        sql = (
            f"DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE sent_at IS NOT NULL "
            f"AND sent_at < ? LIMIT {_CLEANUP_CHUNK})"
        )
        total = 0
        while True:
            cutoff = time.time() - older_than
            n = await self._db.write(sql, (cutoff,))
            total += n
            if n < _CLEANUP_CHUNK:
                return total
