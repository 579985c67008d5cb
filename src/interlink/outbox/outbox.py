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
(``Connection``), or a SQLAlchemy ``Session``/``Connection`` (its DBAPI connection is used,
inside the session's transaction). ``aadd`` is the ``await`` form for asyncpg, psycopg's
``AsyncConnection`` and SQLAlchemy's ``AsyncSession``/``AsyncConnection``.
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
from interlink.outbox.stores import DEFAULT_TABLE, partition_of
from interlink.outbox.stores import postgres as pg_sql
from interlink.outbox.stores import sqlite as sqlite_sql
from interlink.resilience._validate import positive_int
from interlink.tracing.propagation import inject as inject_trace

__all__ = ["DEFAULT_PARTITIONS", "Outbox"]

#: Partitions rows are spread over by key; per-key order holds within one.
DEFAULT_PARTITIONS = 16


def _driver(tx: Any) -> str:
    module = type(tx).__module__.partition(".")[0]
    if module in ("sqlite3", "_sqlite3"):
        return "sqlite"
    if module == "psycopg":
        return "psycopg-async" if inspect.iscoroutinefunction(tx.execute) else "psycopg"
    if module == "asyncpg":
        return "asyncpg"
    if module == "sqlalchemy":
        return "sqlalchemy"
    raise TypeError(
        "'tx' must be a sqlite3, psycopg or asyncpg connection, or a SQLAlchemy session or "
        f"connection: {type(tx).__module__}.{type(tx).__qualname__}"
    )


def _dbapi_of(tx: Any) -> Any:
    """The DBAPI connection under a SQLAlchemy ``Session`` or ``Connection`` (same transaction)."""
    connection = tx.connection() if callable(getattr(tx, "connection", None)) else tx
    return connection.connection.driver_connection


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
        driver = _driver(tx)
        if driver == "sqlalchemy":
            tx, driver = _dbapi_of(tx), _driver(_dbapi_of(tx))
        mid, row = self._row(topic, message, key, headers)
        if driver == "sqlite":
            tx.execute(sqlite_sql.insert_sql(self._table), (*row, time.time()))
        elif driver == "psycopg":
            tx.execute(pg_sql.insert_sql(self._table, "%s"), row)
        else:
            raise TypeError(f"'tx' is an async connection ({driver}): use `await outbox.aadd(...)`")
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
        """``add`` for asyncpg, psycopg ``AsyncConnection`` and SQLAlchemy's async session."""
        driver = _driver(tx)
        if driver == "sqlalchemy":
            connection = await tx.connection() if hasattr(tx, "sync_session") else tx
            raw = await connection.get_raw_connection()
            tx = raw.driver_connection
            driver = _driver(tx)
        mid, row = self._row(topic, message, key, headers)
        if driver == "asyncpg":
            await tx.execute(pg_sql.insert_sql(self._table, "$"), *row)
        elif driver == "psycopg-async":
            await tx.execute(pg_sql.insert_sql(self._table, "%s"), row)
        else:
            raise TypeError(f"'tx' is a blocking connection ({driver}): use `outbox.add(...)`")
        return mid

    def create_tables(self, conn: Any) -> None:
        """Create the outbox tables on a sqlite3 or psycopg connection if missing (commits)."""
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
        """Create the outbox tables on an asyncpg or psycopg async connection if missing."""
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
        else:
            raise TypeError(f"'conn' is a blocking connection ({driver}): use create_tables")

    def __repr__(self) -> str:
        return f"Outbox(table={self._table!r}, partitions={self._partitions!r})"
