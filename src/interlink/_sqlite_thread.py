"""One SQLite connection driven from one worker thread, for the async stores built on sqlite3.

sqlite3 calls block, so an async store runs them off the event loop; a single thread per
store (not a pool) keeps the connection's objects in the thread that made them and makes the
process one writer, so its own statements never fight each other for the write lock. Other
processes on the same file are waited for with ``busy_timeout``. Writes use
``BEGIN IMMEDIATE``: taking the write lock up front avoids the deadlock two readers hit when
both try to upgrade.

Durability: WAL with ``synchronous=NORMAL`` by default: a committed transaction survives the
process being killed (``kill -9``); after a power loss the last few may be lost. Pass
``synchronous="FULL"`` to fsync every commit.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from interlink.errors import InvalidURLError

__all__ = ["SqliteThread", "identifier", "sqlite_path", "write_tx"]

T = TypeVar("T")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")


def identifier(name: str, value: str) -> str:
    """``value`` checked as a table name (it is pasted into SQL, so nothing else is allowed)."""
    if not isinstance(value, str) or not _IDENT.match(value):
        raise ValueError(f"'{name}' must be a SQL identifier ([A-Za-z_][A-Za-z0-9_]*): {value!r}")
    return value


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:`` URL names, by SQLAlchemy's rule, for every SQLite store, registry
    and broker: ``sqlite:///relative.db`` is relative to the working directory,
    ``sqlite:////absolute.db`` absolute, ``sqlite:///:memory:`` a private in-memory database.
    The query holds options, not the path; %-escapes are decoded."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise InvalidURLError(f"'url' must start with sqlite:///: {url!r}")
    if parts.netloc:
        raise InvalidURLError(
            f"'url' must have no host (sqlite:///relative.db or sqlite:////absolute.db): {url!r}"
        )
    path = unquote(parts.path).removeprefix("/")
    if not path:
        raise InvalidURLError(
            f"'url' must name a file (sqlite:///relative.db or sqlite:////absolute.db): {url!r}"
        )
    return path


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on an autocommit connection: commit on success, else roll back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteThread:
    """A lazily opened connection to ``path`` and the one thread that uses it."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", busy_timeout: float = 30.0):
        if synchronous.upper() not in _SYNC:
            raise ValueError(f"'synchronous' must be one of {', '.join(_SYNC)}: {synchronous!r}")
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._conn = conn
        return conn

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the calling thread (only from inside ``run`` or before any)."""
        return fn(self._connection())

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the worker thread and return its result."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="interlink-sqlite")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, fn)

    async def write(self, sql: str, args: Sequence[object] = ()) -> int:
        """Run one statement in a write transaction of its own; how many rows it changed."""
        return await self.run(lambda conn: _write(conn, sql, args))

    async def write_all(self, statements: Iterable[str]) -> None:
        """Run these statements (no parameters) in one write transaction: a schema's set-up
        or removal."""
        await self.run(lambda conn: _write_all(conn, statements))

    async def close(self) -> None:
        """Close the connection and stop the thread; idempotent."""
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._close)
            executor.shutdown(wait=False)
        else:
            self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _write(conn: sqlite3.Connection, sql: str, args: Sequence[object]) -> int:
    with write_tx(conn):
        return conn.execute(sql, args).rowcount


def _write_all(conn: sqlite3.Connection, statements: Iterable[str]) -> None:
    with write_tx(conn):
        for sql in statements:
            conn.execute(sql)
