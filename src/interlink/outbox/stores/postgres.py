"""The outbox on PostgreSQL: the table, its NOTIFY trigger, and the relay's side of it.

A batch runs in one transaction on the relay's own connection: it locks the partition rows it
can get (``SELECT ... FOR UPDATE SKIP LOCKED``: another relay's partitions are skipped, not
waited for), reads their pending rows in ``seq`` order, publishes them, marks them sent and
commits. A relay that dies mid-batch loses its connection, PostgreSQL rolls the transaction
back and the partitions are free at once; nothing is marked sent that was not confirmed.

An ``AFTER INSERT ... FOR EACH STATEMENT`` trigger sends ``NOTIFY <table>`` and the relay
``LISTEN``s on a second connection, so a committed row wakes it at once; when that connection
is down, or ``listen=False``, the relay polls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from interlink._asyncpg import import_asyncpg
from interlink._sqlite_thread import identifier
from interlink.outbox.stores import COLUMNS, OutboxStore, PendingMessage, pending_of

__all__ = ["PostgresOutboxStore", "ddl", "insert_sql"]

_NOW = "extract(epoch from clock_timestamp())"
_CLEANUP_CHUNK = 5000


def _import_asyncpg() -> Any:
    return import_asyncpg("interlink.outbox's PostgreSQL relay")


def ddl(table: str, partitions: int) -> list[str]:
    """The statements creating the table, its indexes, the partition rows and the trigger."""
    t = identifier("table", table)
    return [
        f"CREATE TABLE IF NOT EXISTS {t} (seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL, "
        "topic TEXT NOT NULL, key TEXT, part INTEGER NOT NULL, type TEXT NOT NULL, "
        "headers TEXT NOT NULL, payload BYTEA NOT NULL, correlation_id TEXT, "
        f"created_at DOUBLE PRECISION NOT NULL DEFAULT {_NOW}, sent_at DOUBLE PRECISION)",
        f"CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (seq) WHERE sent_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {t}_sent ON {t} (sent_at) WHERE sent_at IS NOT NULL",
        f"CREATE TABLE IF NOT EXISTS {t}_parts (part INTEGER PRIMARY KEY)",
        f"INSERT INTO {t}_parts SELECT generate_series(0, {partitions - 1}) ON CONFLICT DO NOTHING",
        f"CREATE OR REPLACE FUNCTION {t}_notify() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_notify('{t}', ''); RETURN NULL; END $$",
        f"CREATE OR REPLACE TRIGGER {t}_notify AFTER INSERT ON {t} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify()",
    ]


def insert_sql(table: str, style: str) -> str:
    """The INSERT of one row; ``style`` "$" (asyncpg) or "%s" (psycopg). ``created_at`` is
    the database's clock, so the relay's lag is measured on one clock."""
    marks = ", ".join(f"${i}" for i in range(1, 9)) if style == "$" else ", ".join(["%s"] * 8)
    return (
        f"INSERT INTO {table} (id, topic, key, part, type, headers, payload, correlation_id) "
        f"VALUES ({marks})"
    )


class PostgresOutboxStore(OutboxStore):
    """The relay's view of the outbox table in the database at ``url`` (asyncpg)."""

    def __init__(self, url: str, *, table: str, partitions: int, listen: bool = True) -> None:
        self._url = url
        self._t = identifier("table", table)
        self._partitions = partitions
        self._listen = listen
        self._conn: Any = None  # batches
        self._side: Any = None  # lag, pending, cleanup: callable while a batch is open
        self._listener: Any = None
        self._woken = asyncio.Event()

    async def _connect(self) -> Any:
        asyncpg = _import_asyncpg()
        return await asyncpg.connect(self._url)

    async def open(self) -> None:
        """Connect, create the tables and the trigger if missing, and LISTEN."""
        if self._conn is not None:
            return
        self._conn = await self._connect()
        self._side = await self._connect()
        async with self._conn.transaction():
            await self._conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._t)
            for sql in ddl(self._t, self._partitions):
                await self._conn.execute(sql)
        await self._start_listening()

    async def _start_listening(self) -> None:
        if not self._listen:
            return
        try:
            listener = await self._connect()
            await listener.add_listener(self._t, self._notified)
        except (OSError, _import_asyncpg().PostgresError):
            return  # polling still works; try again on the next wait
        self._listener = listener
        self._woken.set()  # rows may have come in while nobody listened

    def _notified(self, *_: object) -> None:
        self._woken.set()

    async def close(self) -> None:
        """Close the connections (an open batch rolls back)."""
        for name in ("_listener", "_side", "_conn"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await conn.close()

    async def drop(self) -> None:
        """Delete the tables and the trigger function."""
        t = self._t
        await self._side.execute(
            f"DROP TABLE IF EXISTS {t}, {t}_parts; DROP FUNCTION IF EXISTS {t}_notify()"
        )

    async def _batch_connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    async def fetch(self, limit: int) -> tuple[Any, list[PendingMessage]]:
        """Open a transaction, lock the free partitions, read their pending rows."""
        conn = await self._batch_connection()
        t = self._t
        tx = conn.transaction()
        await tx.start()
        try:
            parts = await conn.fetch(
                f"SELECT part FROM {t}_parts ORDER BY part FOR UPDATE SKIP LOCKED"
            )
            rows: list[Any] = []
            if len(parts) == self._partitions:
                rows = await conn.fetch(
                    f"SELECT {COLUMNS} FROM {t} WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
                    limit,
                )
            elif parts:
                rows = await conn.fetch(
                    f"SELECT {COLUMNS} FROM {t} WHERE sent_at IS NULL "
                    "AND part = ANY($1::int[]) ORDER BY seq LIMIT $2",
                    [p[0] for p in parts],
                    limit,
                )
        except BaseException:
            await _quietly(tx.rollback())
            raise
        if not rows:
            await tx.commit()
            return None, []
        return tx, [pending_of(r) for r in rows]

    async def complete(self, claim: Any, seqs: Sequence[int]) -> int:
        """Mark sent and commit (which releases the partitions)."""
        if claim is None:
            return 0
        try:
            status = "UPDATE 0"
            if seqs:
                status = await self._conn.execute(
                    f"UPDATE {self._t} SET sent_at = {_NOW} WHERE seq = ANY($1::bigint[])",
                    list(seqs),
                )
        except BaseException:
            await _quietly(claim.rollback())
            raise
        await claim.commit()
        return int(status.rpartition(" ")[2])

    async def abandon(self, claim: Any) -> None:
        """Roll back (which releases the partitions)."""
        if claim is not None:
            await _quietly(claim.rollback())

    async def wait(self, max_wait: float) -> bool:
        """Until NOTIFY (or ``max_wait`` s: the polling fallback)."""
        if self._listen and (self._listener is None or self._listener.is_closed()):
            self._listener = None
            await self._start_listening()
        if not self._woken.is_set():
            try:
                async with asyncio.timeout(max_wait):  # not wait_for: see the saga claim loop
                    await self._woken.wait()
            except TimeoutError:
                return False
        self._woken.clear()
        return True

    async def _side_connection(self) -> Any:
        if self._side is None or self._side.is_closed():
            self._side = await self._connect()
        return self._side

    async def lag(self) -> float:
        """Age of the oldest pending row, on the database's clock."""
        conn = await self._side_connection()
        value = await conn.fetchval(
            f"SELECT {_NOW} - min(created_at) FROM {self._t} WHERE sent_at IS NULL"
        )
        return 0.0 if value is None else max(float(value), 0.0)

    async def pending(self) -> int:
        """Rows not yet sent."""
        conn = await self._side_connection()
        return int(await conn.fetchval(f"SELECT count(*) FROM {self._t} WHERE sent_at IS NULL"))

    async def cleanup(self, older_than: float) -> int:
        """Delete sent rows in chunks."""
        conn = await self._side_connection()
        t = self._t
        total = 0
        while True:
            status = await conn.execute(
                f"DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE sent_at IS NOT NULL "
                f"AND sent_at < {_NOW} - $1 LIMIT {_CLEANUP_CHUNK})",
                float(older_than),
            )
            n = int(status.rpartition(" ")[2])
            total += n
            if n < _CLEANUP_CHUNK:
                return total


async def _quietly(aw: Any) -> None:
    with contextlib.suppress(Exception):
        await aw
