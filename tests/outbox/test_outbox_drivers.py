"""The outbox writer on the drivers beyond sqlite3/asyncpg/psycopg: aiosqlite and SQLAlchemy's
async session; and the refusal of connections that would commit the event on its own."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from interlink.outbox import Outbox

T = TypeVar("T")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


@pytest.fixture
def table() -> Iterator[str]:
    """A unique outbox table name, dropped from PostgreSQL afterwards."""
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_parts, {name}_orders")
        conn.execute(f"DROP FUNCTION IF EXISTS {name}_notify()")


def sqlite_payloads(path: Path, table: str) -> list[bytes]:
    with sqlite3.connect(path) as conn:
        return [bytes(r[0]) for r in conn.execute(f"SELECT payload FROM {table} ORDER BY seq")]


async def pg_payloads(table: str) -> list[bytes]:
    conn = await asyncpg.connect(PG_URL)
    try:
        return [bytes(r[0]) for r in await conn.fetch(f"SELECT payload FROM {table} ORDER BY seq")]
    finally:
        await conn.close()


def test_aiosqlite_rollback_and_commit(tmp_path: Path, table: str) -> None:
    """aadd joins an aiosqlite transaction: rolled back, nothing; committed, kept."""
    outbox = Outbox(table)
    path = tmp_path / "app.db"

    async def main() -> None:
        async with aiosqlite.connect(path) as conn:
            await outbox.acreate_tables(conn)
            await conn.execute("CREATE TABLE orders (id TEXT)")
            await conn.execute("INSERT INTO orders VALUES ('o1')")
            await outbox.aadd(conn, "orders.placed", b"lost", key="o1")
            await conn.rollback()
            await conn.execute("INSERT INTO orders VALUES ('o2')")
            await outbox.aadd(conn, "orders.placed", b"kept", key="o2")
            await conn.commit()

    run(main())
    assert sqlite_payloads(path, table) == [b"kept"]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "aiosqlite"])
def test_sqlalchemy_async_session_shares_the_transaction(
    tmp_path: Path, table: str, driver: str
) -> None:
    """With an AsyncSession, the row commits and rolls back with the session, even when the
    event is the session's first statement (asyncpg opens no transaction by itself)."""
    outbox = Outbox(table)
    if driver == "aiosqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    else:
        url = PG_URL.replace("postgresql://", f"postgresql+{driver}://")

    async def main() -> list[bytes]:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                await outbox.acreate_tables(session)
                await session.commit()
            async with AsyncSession(engine) as session:
                await outbox.aadd(session, "orders.placed", b"first, rolled back")
                await session.rollback()
                await session.execute(text(f"CREATE TABLE IF NOT EXISTS {table}_orders (id TEXT)"))
                await session.execute(text(f"INSERT INTO {table}_orders VALUES ('o1')"))
                await outbox.aadd(session, "orders.placed", b"after state, rolled back")
                await session.rollback()
                await outbox.aadd(session, "orders.placed", b"kept", key="o2")
                await session.commit()
        finally:
            await engine.dispose()
        if driver == "aiosqlite":
            return sqlite_payloads(tmp_path / "app.db", table)
        return await pg_payloads(table)

    assert run(main()) == [b"kept"]


def test_autocommit_connections_are_refused(tmp_path: Path, table: str) -> None:
    """A connection with no transaction open would commit the event alone: ValueError."""
    outbox = Outbox(table)
    message = r"'tx' has no open transaction \(sqlite in autocommit mode\)"
    conn = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    outbox.create_tables(conn)
    with pytest.raises(ValueError, match=message):
        outbox.add(conn, "t", b"alone")
    conn.execute("BEGIN")
    outbox.add(conn, "t", b"in a transaction")
    conn.execute("COMMIT")
    conn.close()
    assert sqlite_payloads(tmp_path / "app.db", table) == [b"in a transaction"]
    with psycopg.connect(PG_URL, autocommit=True) as pconn:
        outbox.create_tables(pconn)
        with pytest.raises(ValueError, match=r"no open transaction \(psycopg in autocommit"):
            outbox.add(pconn, "t", b"alone")

    async def main() -> None:
        aconn = await asyncpg.connect(PG_URL)
        try:
            with pytest.raises(ValueError, match=r"no open transaction \(asyncpg in autocommit"):
                await outbox.aadd(aconn, "t", b"alone")
        finally:
            await aconn.close()

    run(main())
