"""Idempotent consumers: remember which messages a group has processed, for a while.

At-least-once delivery means a handler can see a message twice (a crash between the handler's
effects and the ack, a lease that expired, a replay, a publisher retrying after a lost
confirm). With ``idempotent=`` a store records ``(group, message id)``:

- ``guard`` claims the id before the handler runs. Already processed: the consumer acks and
  skips the handler. Claimed by another consumer that is still working on it: ``InProgress``
  and the message is retried later. The claim is a lease, so a crashed claimant does not
  block the message for longer than ``lease`` seconds.
- After the handler succeeds the id is marked processed for ``ttl`` seconds (7 days by
  default: longer than any redelivery, and than the time a dead letter usually waits for
  its replay). If the handler fails, the claim is dropped and the retry runs again.

With PostgreSQL the record is written in the transaction the handler uses
(``current_transaction()``): the effects and the record commit together, so effects happen
exactly once. The other stores record after the handler: a crash in between runs the
effects again on redelivery (the window is one round trip).

Stores by URL: ``memory://`` (one process), ``sqlite:///path``, ``postgresql://...``,
``redis://...``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from interlink._asyncpg import import_asyncpg
from interlink._sqlite_thread import sqlite_path
from interlink.errors import _Fields
from interlink.messaging.backend import MessagingError
from interlink.resilience._validate import positive

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_TTL",
    "IdempotencyStore",
    "InProgress",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SqliteStore",
    "current_transaction",
]

#: Seconds a processed id is remembered.
DEFAULT_TTL = 7 * 24 * 3600.0
#: Seconds a claim holds before another consumer may take the message over.
DEFAULT_LEASE = 60.0

_TRANSACTION: ContextVar[Any] = ContextVar("interlink_idempotency_transaction", default=None)


def current_transaction() -> Any:
    """The database connection (in a transaction) the idempotency record is written in, inside
    a handler guarded by a PostgreSQL store; write the effects with it to commit them together.
    None with other stores."""
    return _TRANSACTION.get()


@dataclass(eq=False, repr=False)
class InProgress(MessagingError, _Fields):
    """Another consumer holds the claim on ``message_id``; try again in ``retry_after`` s."""

    _template = "message {message_id!r} is being processed by another consumer"
    message_id: str
    retry_after: float


class IdempotencyStore(Protocol):
    """Where processed message ids are kept."""

    @classmethod
    def from_url(cls, url: str, *, ttl: float = DEFAULT_TTL) -> IdempotencyStore:
        """The store for ``url`` (not yet opened), picked by its scheme: ``memory://``,
        ``sqlite:///path``, ``postgresql://...``, ``redis://...``. A store class called this
        way makes one of its own kind."""
        scheme = urlsplit(url).scheme.lower()
        kind = _STORES.get(scheme)
        if kind is None:
            raise ValueError(
                "'idempotent' must be True or a store URL (memory://, sqlite:///path, "
                f"postgresql://..., redis://...): {url!r}"
            )
        return kind.from_url(url, ttl=ttl)

    async def open(self) -> None:
        """Connect and create the table or keys; idempotent."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...

    def guard(
        self, group: str, message_id: str, *, lease: float | None = None
    ) -> AbstractAsyncContextManager[bool]:
        """Claim the id for the block: yields True to process it, False if already done.
        Raises ``InProgress`` if another consumer holds a live claim. Marks it done when the
        block ends normally, drops the claim when it raises. ``lease`` is how long a claim
        holds if its consumer dies (the store's own lease by default): the consumer passes
        its backend's visibility timeout, so a message a dead consumer had claimed is taken
        over as soon as the broker hands it out again."""
        ...


class MemoryStore:
    """Processed ids in a dict, for tests and the memory broker; ``clock`` is injectable."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        clock: Any = time.monotonic,
    ) -> None:
        self._ttl = positive("ttl", ttl)
        self._lease = positive("lease", lease)
        self._clock = clock
        # (group, id) -> (done?, expires, claim token)
        self._rows: dict[tuple[str, str], tuple[bool, float, object]] = {}

    @classmethod
    def from_url(cls, url: str, *, ttl: float = DEFAULT_TTL) -> Self:
        """A store of its own for ``memory://``."""
        return cls(ttl=ttl)

    async def open(self) -> None:
        """Nothing to open."""

    async def aclose(self) -> None:
        """Nothing to close."""

    @asynccontextmanager
    async def guard(
        self, group: str, message_id: str, *, lease: float | None = None
    ) -> AsyncIterator[bool]:
        """See ``IdempotencyStore.guard``."""
        now = self._clock()
        row = self._rows.get((group, message_id))
        if row is not None and row[1] > now:
            if row[0]:
                yield False
                return
            raise InProgress(message_id, row[1] - now)
        token = object()
        self._rows[(group, message_id)] = (False, now + (lease or self._lease), token)
        try:
            yield True
        except BaseException:
            if self._rows.get((group, message_id), (0, 0, None))[2] is token:
                del self._rows[(group, message_id)]
            raise
        self._rows[(group, message_id)] = (True, self._clock() + self._ttl, token)
        if len(self._rows) % 1024 == 0:
            self._expire(self._clock())

    def _expire(self, now: float) -> None:
        for k in [k for k, row in self._rows.items() if row[1] <= now]:
            del self._rows[k]


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS il_processed(
    grp TEXT NOT NULL, id TEXT NOT NULL, done INTEGER NOT NULL, expires REAL NOT NULL,
    token TEXT NOT NULL, PRIMARY KEY (grp, id)) WITHOUT ROWID
"""
_SQLITE_CLAIM = """
INSERT INTO il_processed(grp, id, done, expires, token) VALUES (?, ?, 0, ?, ?)
ON CONFLICT(grp, id) DO UPDATE SET done = 0, expires = excluded.expires, token = excluded.token
WHERE il_processed.expires <= ?
"""


@asynccontextmanager
async def _claimed(
    message_id: str,
    claim: Callable[[], Awaitable[bool | float]],
    release: Callable[[], Awaitable[object]],
    finish: Callable[[], Awaitable[object]],
) -> AsyncIterator[bool]:
    """``guard`` of a store that leases claims: ``claim`` answers True (the id is ours now),
    False (it was processed) or the seconds another consumer's claim still holds
    (``InProgress``). The block runs on True; then ``finish`` marks the id processed, or,
    if the block raised, ``release`` gives the claim up so a redelivery can run it."""
    claimed = await claim()
    if claimed is False:
        yield False
        return
    if claimed is not True:
        raise InProgress(message_id, claimed)
    try:
        yield True
    except BaseException:
        await release()
        raise
    await finish()


class SqliteStore:
    """Processed ids in a SQLite table (WAL), shared by the processes of one machine. Calls
    run on one worker thread that owns the connection."""

    def __init__(self, path: str, *, ttl: float = DEFAULT_TTL, lease: float = DEFAULT_LEASE):
        self._path = path
        self._ttl = positive("ttl", ttl)
        self._lease = positive("lease", lease)
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._claims = 0

    @classmethod
    def from_url(cls, url: str, *, ttl: float = DEFAULT_TTL) -> Self:
        """The store in the file of ``sqlite:///path``."""
        return cls(sqlite_path(url), ttl=ttl)

    def _connect(self) -> None:
        db = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SQLITE_SCHEMA)
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            await self.open()
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """Create the table (in the worker thread)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="interlink-idempotency")
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connect)

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            db = self._db
            if db is not None:
                await asyncio.get_running_loop().run_in_executor(executor, db.close)
            executor.shutdown(wait=False)

    def _claim(self, group: str, message_id: str, token: str, lease: float) -> bool | float:
        assert self._db is not None
        now = time.time()
        self._claims += 1
        if self._claims % 4096 == 0:
            self._db.execute("DELETE FROM il_processed WHERE expires <= ?", (now,))
        cur = self._db.execute(_SQLITE_CLAIM, (group, message_id, now + lease, token, now))
        if cur.rowcount == 1:
            return True
        row = self._db.execute(
            "SELECT done, expires FROM il_processed WHERE grp = ? AND id = ?", (group, message_id)
        ).fetchone()
        if row is None:  # expired and deleted in between: try once more
            return self._claim(group, message_id, token, lease)
        if row[0]:
            return False
        return max(float(row[1]) - now, 0.0)

    def _finish(self, group: str, message_id: str, token: str, done: bool) -> None:
        assert self._db is not None
        if done:
            self._db.execute(
                "UPDATE il_processed SET done = 1, expires = ? WHERE grp = ? AND id = ? "
                "AND token = ?",
                (time.time() + self._ttl, group, message_id, token),
            )
        else:
            self._db.execute(
                "DELETE FROM il_processed WHERE grp = ? AND id = ? AND token = ? AND done = 0",
                (group, message_id, token),
            )

    def guard(
        self, group: str, message_id: str, *, lease: float | None = None
    ) -> AbstractAsyncContextManager[bool]:
        """See ``IdempotencyStore.guard``."""
        token = uuid.uuid4().hex
        return _claimed(
            message_id,
            lambda: self._run(self._claim, group, message_id, token, lease or self._lease),
            lambda: self._run(self._finish, group, message_id, token, False),
            lambda: self._run(self._finish, group, message_id, token, True),
        )


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


class RedisStore:
    """Processed ids as Redis keys with a TTL (``SET NX PX``): ``il:idem:<group>:<id>``."""

    def __init__(self, url: str, *, ttl: float = DEFAULT_TTL, lease: float = DEFAULT_LEASE):
        self._url = url
        self._ttl_ms = int(positive("ttl", ttl) * 1000)
        self._lease_ms = int(positive("lease", lease) * 1000)
        self._redis: Any = None

    @classmethod
    def from_url(cls, url: str, *, ttl: float = DEFAULT_TTL) -> Self:
        """The store on the server of ``redis://...``."""
        return cls(url, ttl=ttl)

    async def open(self) -> None:
        """Create the client (connections are opened on first use)."""
        if self._redis is None:
            try:
                from redis import asyncio as aioredis
            except ImportError as exc:
                raise ImportError(
                    "the Redis idempotency store needs redis: pip install 'interlink[redis]'"
                ) from exc
            self._redis = aioredis.Redis.from_url(self._url)

    async def aclose(self) -> None:
        """Close the client's connections."""
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    def guard(
        self, group: str, message_id: str, *, lease: float | None = None
    ) -> AbstractAsyncContextManager[bool]:
        """See ``IdempotencyStore.guard``."""
        key = f"il:idem:{group}:{message_id}"
        token = f"p:{uuid.uuid4().hex}"
        lease_ms = int(lease * 1000) if lease else self._lease_ms
        return _claimed(
            message_id,
            lambda: self._claim(key, token, lease_ms),
            lambda: self._redis.eval(_RELEASE, 1, key, token),
            lambda: self._redis.set(key, b"done", px=self._ttl_ms),
        )

    async def _claim(self, key: str, token: str, lease_ms: int) -> bool | float:
        await self.open()
        r = self._redis
        if await r.set(key, token, nx=True, px=lease_ms):
            return True
        value, ttl_ms = await r.get(key), await r.pttl(key)
        if value == b"done":
            return False
        if value is not None:
            return max(int(ttl_ms), 0) / 1000
        # The claim expired in between: one more try, then let the caller come back.
        return True if await r.set(key, token, nx=True, px=lease_ms) else 0.1


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS interlink_processed(
    grp TEXT NOT NULL, id TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL, PRIMARY KEY (grp, id))
"""
_PG_CLAIM = """
INSERT INTO interlink_processed(grp, id, expires) VALUES ($1, $2, now() + $3 * interval '1 second')
ON CONFLICT (grp, id) DO UPDATE SET expires = EXCLUDED.expires
WHERE interlink_processed.expires <= now()
RETURNING 1
"""


class PostgresStore:
    """Processed ids in a PostgreSQL table, written in the handler's transaction.

    ``guard`` opens a transaction on a pooled connection, inserts the record, runs the block
    with the connection as ``current_transaction()``, and commits (or rolls back on error).
    A second consumer of the same id waits on the row lock and then skips, so no claim lease
    is needed: the database serialises them.
    """

    def __init__(self, url: str, *, ttl: float = DEFAULT_TTL, pool_size: int = 10) -> None:
        self._url = url.replace("postgres+asyncpg://", "postgresql://", 1)
        self._ttl = positive("ttl", ttl)
        self._pool_size = pool_size
        self._pool: Any = None
        self._claims = 0

    @classmethod
    def from_url(cls, url: str, *, ttl: float = DEFAULT_TTL) -> Self:
        """The store in the database of ``postgresql://...``."""
        return cls(url, ttl=ttl)

    async def open(self) -> None:
        """Create the pool and the table."""
        if self._pool is not None:
            return
        asyncpg = import_asyncpg("the PostgreSQL idempotency store")
        pool = await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size)
        async with pool.acquire() as conn:
            await conn.execute(_PG_SCHEMA)
        self._pool = pool

    async def aclose(self) -> None:
        """Close the pool."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def guard(
        self, group: str, message_id: str, *, lease: float | None = None
    ) -> AsyncIterator[bool]:
        """See ``IdempotencyStore.guard`` (no lease: the row lock ends with its holder)."""
        await self.open()
        async with self._pool.acquire() as conn, conn.transaction():
            self._claims += 1
            if self._claims % 4096 == 0:
                await conn.execute("DELETE FROM interlink_processed WHERE expires <= now()")
            fresh = await conn.fetchval(_PG_CLAIM, group, message_id, self._ttl)
            if fresh is None:
                yield False
                return
            token = _TRANSACTION.set(conn)
            try:
                yield True
            finally:
                _TRANSACTION.reset(token)


_STORES: dict[str, type[MemoryStore | SqliteStore | PostgresStore | RedisStore]] = {
    "memory": MemoryStore,
    "sqlite": SqliteStore,
    "postgres": PostgresStore,
    "postgresql": PostgresStore,
    "redis": RedisStore,
    "rediss": RedisStore,
}
