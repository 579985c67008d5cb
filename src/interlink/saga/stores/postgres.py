"""The PostgreSQL saga store (asyncpg): same rows as the SQLite one, claims with
``FOR UPDATE SKIP LOCKED`` so concurrent orchestrators take disjoint sets without waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Generic, TypeVar

from interlink._asyncpg import import_asyncpg
from interlink._sqlite_thread import identifier
from interlink.saga.state import ACTIVE, SagaStatus
from interlink.saga.stores import SagaRow, SagaStore, SagaWrite
from interlink.saga.stores._sql import COLUMNS, INSERTED, inserted_values, row_of, written_values

__all__ = ["PostgresSagaStore"]

_ACTIVE = sorted(s.value for s in ACTIVE)


def _import_asyncpg() -> Any:
    return import_asyncpg("interlink.saga's PostgreSQL store")


class PostgresSagaStore(SagaStore):
    """Saga rows in table ``table`` of the database at ``url``, through an asyncpg pool."""

    def __init__(self, url: str, *, table: str = "interlink_sagas", pool_size: int = 10) -> None:
        self._url = url
        self._t = identifier("table", table)
        self._pool_size = pool_size
        self._pool: Any = None
        self._owner_locks: dict[str, Any] = {}  # owner -> the connection holding its lock
        # Writes of concurrent sagas go to the database together: one round trip and one
        # commit for many sagas, which is where the time of a busy orchestrator goes.
        self._saves: _Batched[bool] = _Batched(self._save_many)
        self._creates: _Batched[SagaRow | None] = _Batched(self._create_many)

    async def open(self) -> None:
        """Connect and create the tables if missing."""
        if self._pool is not None:
            return
        asyncpg = _import_asyncpg()
        self._pool = await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size)
        t = self._t
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise concurrent first opens: CREATE ... IF NOT EXISTS can still race.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", t)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                "status TEXT NOT NULL, state TEXT NOT NULL, version BIGINT NOT NULL, "
                "owner TEXT, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0, "
                "wake_at DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
                "updated_at DOUBLE PRECISION NOT NULL, error TEXT)"
            )
            active = ", ".join(f"'{s}'" for s in _ACTIVE)
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {t}_due ON {t} (wake_at) WHERE status IN ({active})"
            )
            await conn.execute(
                f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS late INTEGER NOT NULL DEFAULT 0"
            )
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_late ON {t} (id) WHERE late > 0")
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_owner ON {t} (owner)")
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_updated ON {t} (updated_at)")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t}_replies (saga_id TEXT NOT NULL, "
                "step TEXT NOT NULL, attempt INTEGER NOT NULL, body BYTEA NOT NULL, "
                "PRIMARY KEY (saga_id, step))"
            )
            # Tables made when bodies were text (which cannot hold NUL) become bytes.
            kind = await conn.fetchval(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = $1 AND column_name = 'body'",
                f"{t}_replies",
            )
            if kind == "text":
                await conn.execute(
                    f"ALTER TABLE {t}_replies ALTER COLUMN body TYPE BYTEA "
                    "USING convert_to(body, 'UTF8')"
                )

    async def mark_late(self, saga_id: str) -> None:
        """``late + 1``."""
        await self._execute(f"UPDATE {self._t} SET late = late + 1 WHERE id=$1", saga_id)

    async def forget_late(self, saga_id: str, count: int) -> None:
        """``late - count``."""
        await self._execute(
            f"UPDATE {self._t} SET late = GREATEST(late - $2, 0) WHERE id=$1", saga_id, count
        )

    async def hold_owner(self, owner: str) -> bool:
        """A session advisory lock on a connection of its own: PostgreSQL drops it when the
        connection ends, so when the process dies."""
        if owner in self._owner_locks:  # held already, by another orchestrator on this store
            return False
        conn = await _import_asyncpg().connect(self._url)
        try:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))", self._t, owner
            )
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._owner_locks[owner] = conn
        return True

    async def release_owner(self, owner: str) -> None:
        """Close the lock's connection (which unlocks it)."""
        conn = self._owner_locks.pop(owner, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Close the pool (and give back any owner lock)."""
        for owner in list(self._owner_locks):
            await self.release_owner(owner)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def drop(self) -> None:
        """Delete both tables."""
        await self._execute(f"DROP TABLE IF EXISTS {self._t}, {self._t}_replies")

    def _ready(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the saga store is not open: await store.open() first")
        return self._pool

    async def _execute(self, sql: str, *args: Any) -> int:
        status: str = await self._ready().execute(sql, *args)
        tail = status.rpartition(" ")[2]
        return int(tail) if tail.isdigit() else 0

    async def create(
        self, row: SagaRow, *, owner: str | None, lease_until: float
    ) -> SagaRow | None:
        """Insert unless the id exists; inserts of concurrent starts share one statement."""
        found: SagaRow | None = await self._creates.submit(inserted_values(row, owner, lease_until))
        return found

    async def _create_many(self, rows: list[tuple[Any, ...]]) -> list[SagaRow | None]:
        t = self._t
        found = await self._ready().fetch(
            f"INSERT INTO {t} ({INSERTED}) SELECT * FROM unnest($1::text[], $2::text[], "
            "$3::text[], $4::text[], $5::bigint[], $6::text[], $7::float8[], $8::float8[], "
            "$9::float8[], $10::float8[], $11::text[]) "
            f"ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}",
            *(list(column) for column in zip(*rows, strict=True)),
        )
        made = {r[0]: row_of(r) for r in found}
        return [made.get(values[0]) for values in rows]

    async def save(
        self, saga_id: str, write: SagaWrite, *, owner: str, version: int, release: bool = False
    ) -> bool:
        """Fenced by owner and version, row by row; the saves of concurrent sagas share one
        statement (one transaction, one commit), each saga waiting for its own."""
        saved: bool = await self._saves.submit(
            (saga_id, *written_values(write), owner, version, release)
        )
        return saved

    async def _save_many(self, rows: list[tuple[Any, ...]]) -> list[bool]:
        t = self._t
        found = await self._ready().fetch(
            f"UPDATE {t} SET state=v.state, status=v.status, wake_at=v.wake_at, "
            "updated_at=v.updated_at, error=v.error, "
            f"owner=CASE WHEN v.release THEN NULL ELSE {t}.owner END, "
            f"lease_until=CASE WHEN v.release THEN 0 ELSE {t}.lease_until END, "
            f"version={t}.version+1 "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], "
            "$6::text[], $7::text[], $8::bigint[], $9::bool[]) "
            "AS v(id, state, status, wake_at, updated_at, error, owner, version, release) "
            f"WHERE {t}.id=v.id AND {t}.owner=v.owner AND {t}.version=v.version "
            f"RETURNING {t}.id",
            *(list(column) for column in zip(*rows, strict=True)),
        )
        saved = {r[0] for r in found}
        return [values[0] in saved for values in rows]

    async def release(self, saga_id: str, *, owner: str, wake_at: float) -> bool:
        """Fenced by owner."""
        n = await self._execute(
            f"UPDATE {self._t} SET owner=NULL, lease_until=0, wake_at=$1 WHERE id=$2 AND owner=$3",
            wake_at,
            saga_id,
            owner,
        )
        return n == 1

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
        """``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``."""
        t = self._t
        if own is not None:
            where = (
                "(owner=$3 OR starts_with(owner, $3 || '#')) "
                "AND status = ANY($4::text[]) AND name = ANY($5::text[])"
            )
            args: tuple[Any, ...] = (own, _ACTIVE, sorted(names))
        else:
            where = (
                "name = ANY($4::text[]) AND (owner IS NULL OR lease_until < $5) "
                "AND ((status = ANY($3::text[]) AND wake_at <= $5) OR late > 0)"
            )
            args = (_ACTIVE, sorted(names), now)
        n = len(args) + 3
        rows = await self._ready().fetch(
            f"UPDATE {t} SET owner=$1, lease_until=$2 WHERE id IN (SELECT id FROM {t} "
            f"WHERE {where} ORDER BY wake_at LIMIT ${n} FOR UPDATE SKIP LOCKED) "
            f"RETURNING {COLUMNS}",
            owner,
            lease_until,
            *args,
            limit,
        )
        return [row_of(r) for r in rows]

    async def renew(self, *, owner: str, ids: Sequence[str], lease_until: float) -> set[str]:
        """Extend the lease on the rows ``owner`` still holds."""
        if not ids:
            return set()
        rows = await self._ready().fetch(
            f"UPDATE {self._t} SET lease_until=$1 WHERE owner=$2 AND id = ANY($3::text[]) "
            "RETURNING id",
            lease_until,
            owner,
            list(ids),
        )
        return {r[0] for r in rows}

    async def get(self, saga_id: str) -> SagaRow | None:
        """One row."""
        found = await self._ready().fetchrow(
            f"SELECT {COLUMNS} FROM {self._t} WHERE id=$1", saga_id
        )
        return None if found is None else row_of(found)

    async def list(self, *, statuses: Collection[str] | None, limit: int) -> list[SagaRow]:
        """Most recently updated first."""
        if statuses:
            rows = await self._ready().fetch(
                f"SELECT {COLUMNS} FROM {self._t} WHERE status = ANY($1::text[]) "
                "ORDER BY updated_at DESC LIMIT $2",
                sorted(statuses),
                limit,
            )
        else:
            rows = await self._ready().fetch(
                f"SELECT {COLUMNS} FROM {self._t} ORDER BY updated_at DESC LIMIT $1", limit
            )
        return [row_of(r) for r in rows]

    async def park(self, saga_id: str, *, error: str, owner: str | None, now: float) -> bool:
        """NEEDS_ATTENTION, state untouched."""
        base = (
            f"UPDATE {self._t} SET status=$1, error=$2, owner=NULL, lease_until=0, "
            "updated_at=$3, version=version+1 WHERE id=$4"
        )
        status = SagaStatus.NEEDS_ATTENTION.value
        if owner is not None:
            n = await self._execute(base + " AND owner=$5", status, error, now, saga_id, owner)
        else:
            n = await self._execute(
                base + " AND (owner IS NULL OR lease_until < $3)", status, error, now, saga_id
            )
        return n == 1

    async def put_unowned(self, saga_id: str, write: SagaWrite, *, version: int) -> bool:
        """Fenced by version and by nobody holding a live lease."""
        n = await self._execute(
            f"UPDATE {self._t} SET state=$1, status=$2, wake_at=$3, updated_at=$4, error=$5, "
            "owner=NULL, lease_until=0, version=version+1 "
            "WHERE id=$6 AND version=$7 AND (owner IS NULL OR lease_until < $4)",
            *written_values(write),
            saga_id,
            version,
        )
        return n == 1

    async def put_reply(self, saga_id: str, step: str, attempt: int, body: bytes) -> None:
        """Upsert, unless a reply to a later attempt is kept already."""
        t = self._t
        await self._execute(
            f"INSERT INTO {t}_replies (saga_id, step, attempt, body) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (saga_id, step) "
            "DO UPDATE SET attempt=EXCLUDED.attempt, body=EXCLUDED.body "
            f"WHERE EXCLUDED.attempt >= {t}_replies.attempt",
            saga_id,
            step,
            attempt,
            bytes(body),
        )

    async def get_reply(self, saga_id: str, step: str) -> tuple[int, bytes] | None:
        """(attempt, body) or None."""
        found = await self._ready().fetchrow(
            f"SELECT attempt, body FROM {self._t}_replies WHERE saga_id=$1 AND step=$2",
            saga_id,
            step,
        )
        return None if found is None else (found[0], bytes(found[1]))

    async def clear_reply(self, saga_id: str, step: str) -> None:
        """Delete."""
        await self._execute(
            f"DELETE FROM {self._t}_replies WHERE saga_id=$1 AND step=$2", saga_id, step
        )


R = TypeVar("R")


class _Batched(Generic[R]):
    """Runs ``flush`` on everything submitted meanwhile: a submit when nothing is in flight
    goes at once (no waiting at low load); while ``concurrency`` flushes are in flight, new
    items gather and go together in the next one. Each caller gets its own item's result (or
    the flush's error)."""

    def __init__(
        self,
        flush: Callable[[list[tuple[Any, ...]]], Awaitable[list[R]]],
        *,
        max_size: int = 500,
        concurrency: int = 2,
    ) -> None:
        self._flush = flush
        self._max = max_size
        self._concurrency = concurrency
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[R]]] = []
        self._running = 0
        self._drains: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def submit(self, item: tuple[Any, ...]) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running < self._concurrency:
            self._running += 1
            drain = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(drain)
            drain.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                try:
                    results = await self._flush([item for item, _ in batch])
                except BaseException as exc:  # each caller sees the error of its write
                    for _, future in batch:
                        if future.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running -= 1
