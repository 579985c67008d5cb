"""For the service that carries out a saga's commands: refuse work the saga no longer wants.

A command can outlive its saga: the payment service is down, the saga's attempt times out, the
saga compensates ("refund: nothing to undo"), then the payment service comes back and works off
its queue. If it authorizes now, the money stays taken on a cancelled order. ``CommandGuard``
closes that gap with one small table, keyed by the action's idempotency key:

- ``await guard.admit(headers)`` before doing the work: raises ``CommandRefused`` (a
  ``StepFailed``: answer ``reply_body(ok=False, ...)``) when the command has expired (its
  ``saga-expires-at`` passed: the orchestrator stopped waiting) or its step was cancelled;
  otherwise records the key as admitted;
- ``await guard.cancel(headers)`` in the compensation's handler: records the key as
  cancelled, so a later ``admit`` of it is refused, and says whether an ``admit`` came first
  (True: there may be something to undo; False: nothing was done and nothing ever will be).

``admit`` and ``cancel`` of one key are serialised by the database, so either the work was
admitted before the cancel (and the compensation undoes it) or it is refused after.

::

    guard = CommandGuard.from_url("postgresql://payments@db/payments")

    @broker.subscriber("payments.authorize", group="payments")
    async def authorize(env: Envelope) -> None:
        try:
            await guard.admit(env.headers)
        except CommandRefused as refused:
            body = reply_body(ok=False, error=refused.error)
        else:
            body = reply_body(result=await payments.authorize(env.payload, env.headers))
        await broker.publish(env.headers["reply-to"], body, headers=reply_headers(env.headers))
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from interlink._asyncpg import import_asyncpg
from interlink._sqlite_thread import SqliteThread, identifier, sqlite_path, write_tx
from interlink.clock import Clock
from interlink.saga._runner import COMPENSATION_SLOT, SAGA_EXPIRES_AT, SAGA_ID, SAGA_STEP
from interlink.saga.errors import InvalidReply, StepFailed

__all__ = ["CommandGuard", "CommandRefused"]

_ADMITTED, _CANCELLED = "admitted", "cancelled"


class CommandRefused(StepFailed):
    """The command expired or its step was cancelled: answer it as a refusal."""


def _action_key(headers: Mapping[str, str]) -> str:
    """The idempotency key of the action a command (or its compensation's command) is about."""
    saga_id, slot = headers.get(SAGA_ID), headers.get(SAGA_STEP)
    if not saga_id or not slot:
        raise InvalidReply(slot or "?", f"a saga command needs {SAGA_ID} and {SAGA_STEP} headers")
    step = slot.removesuffix(COMPENSATION_SLOT)
    return f"{saga_id}:{step}"


class CommandGuard:
    """Admits a saga's command at most until it expires and never after its step was
    cancelled; records both in table ``table`` of the database at ``url`` (``from_url``)."""

    def __init__(self, backend: Any, *, clock: Clock = time.time) -> None:
        self._db = backend
        self._clock = clock
        self._opening: asyncio.Lock | None = None
        self._open = False

    async def open(self) -> None:
        """Connect and create the table if missing; idempotent (the calls below open it)."""
        if self._open:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:  # many handlers may ask at once: connect once
            if not self._open:
                await self._db.open()
                self._open = True

    @classmethod
    def from_url(
        cls, url: str, *, table: str = "interlink_saga_commands", clock: Clock = time.time
    ) -> CommandGuard:
        """A guard on ``sqlite:///path.db`` or ``postgresql://...`` (opened on first use)."""
        scheme = urlsplit(url).scheme.lower()
        if scheme == "sqlite":
            return cls(_Sqlite(url, identifier("table", table)), clock=clock)
        if scheme in ("postgresql", "postgres"):
            return cls(_Postgres(url, identifier("table", table)), clock=clock)
        raise ValueError(f"'url' must start with sqlite:/// or postgresql://: {scheme}://...")

    async def __aenter__(self) -> CommandGuard:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the connection."""
        self._open = False
        await self._db.close()

    async def drop(self) -> None:
        """Delete the table (tests, teardown)."""
        await self.open()
        await self._db.drop()

    async def admit(self, headers: Mapping[str, str]) -> None:
        """Let the command's work go ahead, or raise ``CommandRefused`` (expired, cancelled)."""
        key, now = _action_key(headers), self._clock()
        slot = headers.get(SAGA_STEP, "?")
        expires = headers.get(SAGA_EXPIRES_AT)
        if expires is not None:
            try:
                expired = now > float(expires)
            except ValueError:
                raise InvalidReply(
                    slot, f"{SAGA_EXPIRES_AT} is not a number: {expires!r}"
                ) from None
            if expired:
                raise CommandRefused(slot, "expired: the saga stopped waiting for this attempt")
        await self.open()
        if await self._db.admit(key, now) != _ADMITTED:
            raise CommandRefused(slot, "cancelled: the saga undid this step already")

    async def cancel(self, headers: Mapping[str, str]) -> bool:
        """Refuse the step's command from now on; True if it was admitted before (undo it)."""
        await self.open()
        before: str | None = await self._db.cancel(_action_key(headers), self._clock())
        return before == _ADMITTED


def _ddl(t: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "before TEXT, at DOUBLE PRECISION NOT NULL)"
    )


def _admit_sql(t: str, mark: str) -> str:
    # A conflict keeps the row as it is and returns it: "cancelled" stays cancelled.
    a, b = (mark, mark) if mark == "?" else ("$1", "$2")
    return (
        f"INSERT INTO {t} (key, status, at) VALUES ({a}, '{_ADMITTED}', {b}) "
        f"ON CONFLICT (key) DO UPDATE SET at = {t}.at RETURNING status"
    )


def _cancel_sql(t: str, mark: str) -> str:
    # SET sees the old row: ``before`` keeps what the status was (None: nothing came first).
    a, b = (mark, mark) if mark == "?" else ("$1", "$2")
    return (
        f"INSERT INTO {t} (key, status, at) VALUES ({a}, '{_CANCELLED}', {b}) "
        f"ON CONFLICT (key) DO UPDATE SET before = {t}.status, status = '{_CANCELLED}' "
        "RETURNING before"
    )


class _Sqlite:
    def __init__(self, url: str, table: str) -> None:
        self._t = table
        self._db = SqliteThread(sqlite_path(url))
        self._ready = False

    async def open(self) -> None:
        if not self._ready:
            sql = _ddl(self._t)
            await self._db.write(sql)
            self._ready = True

    async def close(self) -> None:
        await self._db.close()

    async def drop(self) -> None:
        sql = f"DROP TABLE IF EXISTS {self._t}"
        await self._db.write(sql)

    async def admit(self, key: str, now: float) -> str | None:
        sql = _admit_sql(self._t, "?")
        return await self._db.run(lambda c: _one(c, sql, (key, now)))

    async def cancel(self, key: str, now: float) -> str | None:
        sql = _cancel_sql(self._t, "?")
        return await self._db.run(lambda c: _one(c, sql, (key, now)))


def _one(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str | None:
    with write_tx(conn):
        row = conn.execute(sql, args).fetchone()
    return None if row is None or row[0] is None else str(row[0])


class _Postgres:
    def __init__(self, url: str, table: str) -> None:
        self._url, self._t = url, table
        self._pool: Any = None

    async def open(self) -> None:
        if self._pool is None:
            asyncpg = import_asyncpg("CommandGuard on PostgreSQL")
            pool = await asyncpg.create_pool(self._url, min_size=1, max_size=4)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._t)
                await conn.execute(_ddl(self._t))
            self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def drop(self) -> None:
        await self._pool.execute(f"DROP TABLE IF EXISTS {self._t}")

    async def admit(self, key: str, now: float) -> str | None:
        value: str | None = await self._pool.fetchval(_admit_sql(self._t, "$"), key, now)
        return value

    async def cancel(self, key: str, now: float) -> str | None:
        value: str | None = await self._pool.fetchval(_cancel_sql(self._t, "$"), key, now)
        return value
