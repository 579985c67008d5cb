"""Writing events in the same database transaction as the state change they announce.

::

    outbox = Outbox()                        # table "interlink_outbox", 16 partitions
    outbox.create_tables(conn)               # once (the relay creates them too)

    with conn:                               # sqlite3: one transaction
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = ?", (order_id,))
        outbox.add(conn, "orders.paid", OrderPaid(order_id=order_id), key=order_id)

Either both the state change and the event row commit, or neither does: a rolled-back
transaction leaves no event behind, and a committed one cannot lose its event, whatever
happens to the process afterwards. The relay (``interlink.outbox.relay``) publishes the rows.

``add`` takes the caller's open connection and never commits: sqlite3, psycopg 3
(``Connection``), or a SQLAlchemy ``Session``/``Connection`` (the row is written through it,
so it joins the session's transaction). ``aadd`` is the ``await`` form for asyncpg, aiosqlite,
psycopg's ``AsyncConnection`` and SQLAlchemy's ``AsyncSession``/``AsyncConnection``.

A connection in autocommit mode with no transaction open is refused (``ValueError``): the row
would commit on its own, apart from the state change it announces, which is the one thing an
outbox must never allow.
"""

from __future__ import annotations

import inspect
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from interlink._sqlite_thread import identifier
from interlink.context import correlation_id
from interlink.messaging._codec import check_topic, payload_of
from interlink.outbox.stores import DEFAULT_PARTITIONS, DEFAULT_TABLE, partition_of
from interlink.outbox.stores import postgres as pg_sql
from interlink.outbox.stores import sqlite as sqlite_sql
from interlink.resilience._validate import positive_int
from interlink.tracing.propagation import inject as inject_trace

__all__ = ["Outbox"]


def _driver(tx: Any) -> str:
    module = type(tx).__module__
    top = module.partition(".")[0]
    if top in ("sqlite3", "_sqlite3"):
        return "sqlite"
    if top == "aiosqlite":
        return "aiosqlite"
    if top == "psycopg":
        return "psycopg-async" if inspect.iscoroutinefunction(tx.execute) else "psycopg"
    if top == "asyncpg":
        return "asyncpg"
    if top == "sqlalchemy":
        return "sqlalchemy-async" if module.startswith("sqlalchemy.ext.asyncio") else "sqlalchemy"
    raise TypeError(
        "'tx' must be a sqlite3, aiosqlite, psycopg or asyncpg connection, or a SQLAlchemy "
        f"session or connection: {type(tx).__module__}.{type(tx).__qualname__}"
    )


def _dbapi_of(tx: Any) -> Any:
    """The DBAPI connection under a SQLAlchemy ``Session`` or ``Connection`` (same transaction)."""
    connection = tx.connection() if callable(getattr(tx, "connection", None)) else tx
    return connection.connection.driver_connection


def _autocommitting(driver: str, tx: Any) -> bool:
    """Whether a statement on ``tx`` would commit by itself (no transaction open, none implied)."""
    if driver in ("sqlite", "aiosqlite"):
        # isolation_level "" / "DEFERRED" ...: sqlite3 opens a transaction before the INSERT
        # (unless Python 3.12's autocommit=True overrides it).
        manual = tx.isolation_level is None or getattr(tx, "autocommit", None) is True
        return manual and not tx.in_transaction
    if driver in ("psycopg", "psycopg-async"):
        return bool(tx.autocommit) and tx.info.transaction_status.name == "IDLE"
    if driver == "asyncpg":
        return not tx.is_in_transaction()
    return False  # SQLAlchemy begins its transaction itself


def _check_transaction(driver: str, tx: Any) -> None:
    if _autocommitting(driver, tx):
        raise ValueError(
            f"'tx' has no open transaction ({driver} in autocommit mode): the event would "
            "commit on its own, not with the state change; add it inside the transaction "
            "(`with conn:`, `conn.transaction()`, `BEGIN`)"
        )


_BLOCKING = frozenset({"sqlite", "psycopg", "sqlalchemy"})
_COLUMNS = ("id", "topic", "key", "part", "type", "headers", "payload", "correlation_id")


def _sa_statement(tx: Any, table: str, row: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    """The INSERT as a SQLAlchemy ``text`` for ``tx``'s dialect, with its parameters: executed
    through SQLAlchemy, so the session begins its transaction first if it has not yet."""
    from sqlalchemy import text

    dialect = getattr(tx, "dialect", None) or tx.get_bind().dialect
    params = dict(zip(_COLUMNS, row, strict=True))
    if dialect.name == "sqlite":
        params["created_at"] = time.time()
    elif dialect.name != "postgresql":
        raise TypeError(f"'tx' must be on SQLite or PostgreSQL: {dialect.name}")
    names = ", ".join(params)
    marks = ", ".join(f":{name}" for name in params)
    return text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), params


class Outbox:
    """The outbox table's writer: ``add`` an event inside the caller's transaction.

    ``table`` is the table's name (one per service database is usual); ``partitions`` must
    match the relay's (rows of one key go to one partition, which is how their order is kept).
    """

    __slots__ = ("_partitions", "_table")

    def __init__(self, table: str = DEFAULT_TABLE, *, partitions: int = DEFAULT_PARTITIONS) -> None:
        self._table = identifier("table", table)
        self._partitions = positive_int("partitions", partitions)

    @property
    def table(self) -> str:
        """The table rows go to."""
        return self._table

    @property
    def partitions(self) -> int:
        """How many partitions keys are spread over."""
        return self._partitions

    def _row(
        self,
        topic: str,
        message: Any,
        key: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[str, tuple[Any, ...]]:
        check_topic(topic)
        if key is not None and not isinstance(key, str):
            raise ValueError(f"'key' must be a string or None: {key!r}")
        payload, type_name = payload_of(message)
        hdrs = dict(headers) if headers else {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in hdrs.items()):
            raise ValueError(f"'headers' must map strings to strings: {hdrs!r}")
        inject_trace(hdrs)  # the trace of the request that changed the state
        mid = uuid.uuid4().hex
        part = partition_of(key, mid, self._partitions)
        head = json.dumps(hdrs, separators=(",", ":"))
        return mid, (mid, topic, key, part, type_name, head, payload, correlation_id())

    def _insert(
        self,
        tx: Any,
        topic: str,
        message: Any,
        key: str | None,
        headers: Mapping[str, str] | None,
        *,
        blocking: bool,
    ) -> tuple[str, tuple[Any, ...]]:
        """The message id, and the arguments of the ``tx.execute`` that inserts its row."""
        driver = _driver(tx)
        if blocking and driver not in _BLOCKING:
            raise TypeError(f"'tx' is an async connection ({driver}): use `await outbox.aadd(...)`")
        if not blocking and driver in _BLOCKING:
            raise TypeError(f"'tx' is a blocking connection ({driver}): use `outbox.add(...)`")
        _check_transaction(driver, tx)
        mid, row = self._row(topic, message, key, headers)
        if driver.startswith("sqlalchemy"):
            return mid, _sa_statement(tx, self._table, row)
        if driver == "asyncpg":
            return mid, (pg_sql.insert_sql(self._table, "$"), *row)
        if driver.startswith("psycopg"):
            return mid, (pg_sql.insert_sql(self._table, "%s"), row)
        return mid, (sqlite_sql.insert_sql(self._table), (*row, time.time()))

    def add(
        self,
        tx: Any,
        topic: str,
        message: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Insert the event into the outbox within ``tx``'s open transaction (no commit);
        returns the message id consumers will see. ``message``: a pydantic model, bytes, str
        or a JSON-able value, encoded as ``Broker.publish`` would."""
        mid, statement = self._insert(tx, topic, message, key, headers, blocking=True)
        tx.execute(*statement)
        return mid

    async def aadd(
        self,
        tx: Any,
        topic: str,
        message: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """``add`` for asyncpg, aiosqlite, psycopg ``AsyncConnection`` and SQLAlchemy's
        ``AsyncSession``/``AsyncConnection``."""
        mid, statement = self._insert(tx, topic, message, key, headers, blocking=False)
        await tx.execute(*statement)
        return mid

    def create_tables(self, conn: Any) -> None:
        """Create the outbox tables on a sqlite3 or psycopg connection, or a SQLAlchemy
        ``Session``/``Connection``, if missing. Commits: call it at startup, not mid-transaction."""
        driver = _driver(conn)
        if driver == "sqlalchemy":
            conn, driver = _dbapi_of(conn), _driver(_dbapi_of(conn))
        if driver == "sqlite":
            with conn:
                for sql in sqlite_sql.ddl(self._table, self._partitions):
                    conn.execute(sql)
        elif driver == "psycopg":
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._table,))
                for sql in pg_sql.ddl(self._table, self._partitions):
                    conn.execute(sql)
        else:
            raise TypeError(f"'conn' is an async connection ({driver}): use acreate_tables")

    async def acreate_tables(self, conn: Any) -> None:
        """Create the outbox tables on an asyncpg, aiosqlite or psycopg async connection, or a
        SQLAlchemy ``AsyncSession``/``AsyncConnection``, if missing (commits, like
        ``create_tables``)."""
        driver = _driver(conn)
        if driver == "sqlalchemy-async":
            connection = await conn.connection() if hasattr(conn, "sync_session") else conn
            conn = (await connection.get_raw_connection()).driver_connection
            driver = _driver(conn)
        if driver == "asyncpg":
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
                for sql in pg_sql.ddl(self._table, self._partitions):
                    await conn.execute(sql)
        elif driver == "psycopg-async":
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._table,))
                for sql in pg_sql.ddl(self._table, self._partitions):
                    await conn.execute(sql)
        elif driver == "aiosqlite":
            for sql in sqlite_sql.ddl(self._table, self._partitions):
                await conn.execute(sql)
            await conn.commit()
        else:
            raise TypeError(f"'conn' is a blocking connection ({driver}): use create_tables")

    def __repr__(self) -> str:
        return f"Outbox(table={self._table!r}, partitions={self._partitions!r})"
