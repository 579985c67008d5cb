"""The embedded saga store: one SQLite file (WAL), shared by the processes of one machine.

SQLite has no row locks, so claims are plain leases: a claim is one ``UPDATE ... RETURNING``
inside ``BEGIN IMMEDIATE``, which holds the database's single write lock, so two orchestrators
can never take the same row. See ``interlink._sqlite_thread`` for the durability mode.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence

from interlink._sqlite_thread import SqliteThread, identifier, sqlite_path, write_tx
from interlink.saga.state import ACTIVE, SagaStatus
from interlink.saga.stores import SagaRow, SagaStore, SagaWrite
from interlink.saga.stores._sql import COLUMNS, INSERTED, inserted_values, row_of, written_values

__all__ = ["SqliteSagaStore"]

_ACTIVE = tuple(sorted(s.value for s in ACTIVE))

# The owner lock is an exclusive flock (on Windows, where there is none, owners never lock).
_flock: Callable[[int, int], None] | None
try:
    import fcntl

    _flock = fcntl.flock
    _EXCLUSIVE = fcntl.LOCK_EX | fcntl.LOCK_NB
except ImportError:  # pragma: no cover - not on Windows
    _flock, _EXCLUSIVE = None, 0


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SqliteSagaStore(SagaStore):
    """Saga rows in table ``table`` of the SQLite file named by ``url``."""

    def __init__(self, url: str, *, table: str = "interlink_sagas", synchronous: str = "NORMAL"):
        self._t = identifier("table", table)
        self._path = sqlite_path(url)
        self._db = SqliteThread(self._path, synchronous=synchronous)
        self._owner_locks: dict[str, int] = {}  # owner -> the open file holding its lock

    async def open(self) -> None:
        """Create the tables if missing."""
        t = self._t

        def setup(conn: sqlite3.Connection) -> None:
            with write_tx(conn):
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                    "status TEXT NOT NULL, state TEXT NOT NULL, version INTEGER NOT NULL, "
                    "owner TEXT, lease_until REAL NOT NULL DEFAULT 0, wake_at REAL NOT NULL, "
                    "created_at REAL NOT NULL, updated_at REAL NOT NULL, error TEXT)"
                )
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {t}_due ON {t} (wake_at) "
                    f"WHERE status IN {_ACTIVE!r}"
                )
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
                if "late" not in columns:  # a table made before late replies were counted
                    conn.execute(f"ALTER TABLE {t} ADD COLUMN late INTEGER NOT NULL DEFAULT 0")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_late ON {t} (id) WHERE late > 0")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_owner ON {t} (owner)")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_updated ON {t} (updated_at)")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {t}_replies (saga_id TEXT NOT NULL, "
                    "step TEXT NOT NULL, attempt INTEGER NOT NULL, body BLOB NOT NULL, "
                    "PRIMARY KEY (saga_id, step))"
                )

        await self._db.run(setup)

    async def close(self) -> None:
        """Close the connection (and give back any owner lock)."""
        for owner in list(self._owner_locks):
            await self.release_owner(owner)
        await self._db.close()

    async def mark_late(self, saga_id: str) -> None:
        """``late + 1``."""
        sql = f"UPDATE {self._t} SET late = late + 1 WHERE id=?"
        await self._db.write(sql, (saga_id,))

    async def forget_late(self, saga_id: str, count: int) -> None:
        """``late - count``."""
        sql = f"UPDATE {self._t} SET late = MAX(late - ?, 0) WHERE id=?"
        await self._db.write(sql, (count, saga_id))

    async def hold_owner(self, owner: str) -> bool:
        """An exclusive ``flock`` on a file next to the database, named after the table and
        the owner: the kernel drops it when the process dies, however it dies."""
        if owner in self._owner_locks:  # held already, by another orchestrator on this store
            return False
        if _flock is None:  # no flock here: never claim another process's sagas
            return False
        digest = hashlib.sha256(f"{self._t}\0{owner}".encode()).hexdigest()[:20]
        fd = os.open(f"{self._path}.owner-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, _EXCLUSIVE)
        except OSError:
            os.close(fd)
            return False
        self._owner_locks[owner] = fd
        return True

    async def release_owner(self, owner: str) -> None:
        """Unlock and close the owner's lock file."""
        fd = self._owner_locks.pop(owner, None)
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    async def drop(self) -> None:
        """Delete both tables."""
        t = self._t
        await self._db.write_all([f"DROP TABLE IF EXISTS {t}", f"DROP TABLE IF EXISTS {t}_replies"])

    async def create(
        self, row: SagaRow, *, owner: str | None, lease_until: float
    ) -> SagaRow | None:
        """Insert unless the id exists."""
        t = self._t

        def create(conn: sqlite3.Connection) -> SagaRow | None:
            with write_tx(conn):
                cur = conn.execute(
                    f"INSERT INTO {t} ({INSERTED}) VALUES ({_marks(11)}) "
                    f"ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}",
                    inserted_values(row, owner, lease_until),
                )
                found = cur.fetchone()
            return None if found is None else row_of(found)

        return await self._db.run(create)

    async def save(
        self, saga_id: str, write: SagaWrite, *, owner: str, version: int, release: bool = False
    ) -> bool:
        """Fenced by owner and version."""
        let_go = "owner=NULL, lease_until=0, " if release else ""
        sql = (
            f"UPDATE {self._t} SET state=?, status=?, wake_at=?, updated_at=?, error=?, "
            f"{let_go}version=version+1 WHERE id=? AND owner=? AND version=?"
        )
        args = (*written_values(write), saga_id, owner, version)
        return await self._db.write(sql, args) == 1

    async def release(self, saga_id: str, *, owner: str, wake_at: float) -> bool:
        """Fenced by owner."""
        sql = f"UPDATE {self._t} SET owner=NULL, lease_until=0, wake_at=? WHERE id=? AND owner=?"
        return await self._db.write(sql, (wake_at, saga_id, owner)) == 1

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
        """Take due, free rows (or, with ``own``, the rows held under that name)."""
        t = self._t
        names = sorted(names)
        if not names:
            return []
        if own is not None:
            where = (
                "(owner=? OR substr(owner, 1, ?)=?) "
                f"AND status IN ({_marks(len(_ACTIVE))}) AND name IN ({_marks(len(names))})"
            )
            args: tuple[object, ...] = (own, len(own) + 1, own + "#", *_ACTIVE, *names)
        else:
            where = (
                f"name IN ({_marks(len(names))}) AND (owner IS NULL OR lease_until < ?) "
                f"AND ((status IN ({_marks(len(_ACTIVE))}) AND wake_at <= ?) OR late > 0)"
            )
            args = (*names, now, *_ACTIVE, now)
        sql = (
            f"UPDATE {t} SET owner=?, lease_until=? WHERE id IN "
            f"(SELECT id FROM {t} WHERE {where} ORDER BY wake_at LIMIT ?) RETURNING {COLUMNS}"
        )

        def claim(conn: sqlite3.Connection) -> list[SagaRow]:
            with write_tx(conn):
                rows = conn.execute(sql, (owner, lease_until, *args, limit)).fetchall()
            return [row_of(r) for r in rows]

        return await self._db.run(claim)

    async def renew(self, *, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend the lease on the rows ``owner`` still holds."""
        if not ids:
            return set()
        t = self._t

        def renew(conn: sqlite3.Connection) -> set[str]:
            kept: set[str] = set()
            with write_tx(conn):
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    rows = conn.execute(
                        f"UPDATE {t} SET lease_until=? WHERE owner=? AND id IN "
                        f"({_marks(len(chunk))}) RETURNING id",
                        (lease_until, owner, *chunk),
                    ).fetchall()
                    kept.update(str(r[0]) for r in rows)
            return kept

        return await self._db.run(renew)

    async def get(self, saga_id: str) -> SagaRow | None:
        """One row."""
        sql = f"SELECT {COLUMNS} FROM {self._t} WHERE id=?"

        def get(conn: sqlite3.Connection) -> SagaRow | None:
            found = conn.execute(sql, (saga_id,)).fetchone()
            return None if found is None else row_of(found)

        return await self._db.run(get)

    async def list(self, *, statuses: Collection[str] | None, limit: int) -> list[SagaRow]:
        """Most recently updated first."""
        t = self._t
        if statuses:
            wanted = sorted(statuses)
            sql = (
                f"SELECT {COLUMNS} FROM {t} WHERE status IN ({_marks(len(wanted))}) "
                "ORDER BY updated_at DESC LIMIT ?"
            )
            args: tuple[object, ...] = (*wanted, limit)
        else:
            sql = f"SELECT {COLUMNS} FROM {t} ORDER BY updated_at DESC LIMIT ?"
            args = (limit,)
        return await self._db.run(lambda c: [row_of(r) for r in c.execute(sql, args).fetchall()])

    async def park(self, saga_id: str, *, error: str, owner: str | None, now: float) -> bool:
        """NEEDS_ATTENTION, state untouched."""
        base = (
            f"UPDATE {self._t} SET status=?, error=?, owner=NULL, lease_until=0, updated_at=?, "
            "version=version+1 WHERE id=?"
        )
        args: tuple[object, ...] = (SagaStatus.NEEDS_ATTENTION.value, error, now, saga_id)
        if owner is not None:
            sql, args = base + " AND owner=?", (*args, owner)
        else:
            sql, args = base + " AND (owner IS NULL OR lease_until < ?)", (*args, now)
        return await self._db.write(sql, args) == 1

    async def put_unowned(self, saga_id: str, write: SagaWrite, *, version: int) -> bool:
        """Fenced by version and by nobody holding a live lease."""
        sql = (
            f"UPDATE {self._t} SET state=?, status=?, wake_at=?, updated_at=?, error=?, "
            "owner=NULL, lease_until=0, version=version+1 "
            "WHERE id=? AND version=? AND (owner IS NULL OR lease_until < ?)"
        )
        args = (*written_values(write), saga_id, version, write.updated_at)
        return await self._db.write(sql, args) == 1

    async def put_reply(self, saga_id: str, step: str, attempt: int, body: bytes) -> None:
        """Upsert, unless a reply to a later attempt is kept already."""
        t = self._t
        sql = (
            f"INSERT INTO {t}_replies (saga_id, step, attempt, body) VALUES (?,?,?,?) "
            "ON CONFLICT (saga_id, step) DO UPDATE SET attempt=excluded.attempt, "
            f"body=excluded.body WHERE excluded.attempt >= {t}_replies.attempt"
        )
        await self._db.write(sql, (saga_id, step, attempt, bytes(body)))

    async def get_reply(self, saga_id: str, step: str) -> tuple[int, bytes] | None:
        """(attempt, body) or None."""
        sql = f"SELECT attempt, body FROM {self._t}_replies WHERE saga_id=? AND step=?"

        def get(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            found = conn.execute(sql, (saga_id, step)).fetchone()
            if found is None:
                return None
            body = found[1]  # a table made before bodies were bytes may hold text
            return int(found[0]), body.encode() if isinstance(body, str) else bytes(body)

        return await self._db.run(get)

    async def clear_reply(self, saga_id: str, step: str) -> None:
        """Delete."""
        sql = f"DELETE FROM {self._t}_replies WHERE saga_id=? AND step=?"
        await self._db.write(sql, (saga_id, step))
