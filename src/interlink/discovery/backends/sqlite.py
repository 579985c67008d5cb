"""``sqlite:///registry.db``: the embedded default, shared by processes on one machine.

No server to run: every process opens the same file (WAL mode, so readers never block the
writer). Expiry is by wall-clock time, which all processes on one machine share. Changes are
noticed by polling (``poll_interval``, default 0.1 s): a poll is one indexed query answered
from the page cache, and SQLite has no cross-process notification to wait on instead. Calls
run in a worker thread so the event loop never waits on a file lock.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from interlink._sqlite_thread import sqlite_path
from interlink.clock import Clock
from interlink.discovery.backends._shared import instance_of, query_seconds, skip_record, split_url
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.discovery.registry import BaseRegistry, Snapshot, snapshot_of, snapshots

__all__ = ["SqliteRegistry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS interlink_instances (
    service     TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    data        TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (service, instance_id)
)
"""


class SqliteRegistry(BaseRegistry):
    """Instances as rows of one table in the SQLite file at ``path``."""

    def __init__(
        self, path: str | Path, *, poll_interval: float = 0.1, clock: Clock = time.time
    ) -> None:
        super().__init__()
        self.path = str(path)
        self.poll_interval = poll_interval
        self._clock = clock
        self._lock = threading.Lock()
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=5.0, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteRegistry:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``
        (SQLAlchemy's rule, as every SQLite store of the package); ``?poll_interval=0.1`` sets
        the poll interval (seconds > 0)."""
        path = sqlite_path(url)
        _, query = split_url(url)
        query_seconds(url, query, options, "poll_interval")
        return cls(path, **options)

    def _record(self, service: str, instance_id: object) -> str:
        return f"{self.path}:interlink_instances[{service}/{instance_id}]"

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def _call(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        return await asyncio.to_thread(self._run, sql, args)

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        rows = await self._call(
            "SELECT data FROM interlink_instances "
            "WHERE service = ? AND instance_id = ? AND expires_at > ?",
            (service, instance_id, self._clock()),
        )
        return (
            instance_of(service, self._record(service, instance_id), rows[0][0]) if rows else None
        )

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        await self._call(
            "INSERT INTO interlink_instances (service, instance_id, data, expires_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (service, instance_id) "
            "DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
            (instance.service, instance.instance_id, instance.to_json(), self._clock() + ttl),
        )
        return None

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        await self._call(
            "DELETE FROM interlink_instances WHERE service = ? AND instance_id = ?",
            (instance.service, instance.instance_id),
        )

    async def _live(self, service: str) -> tuple[Snapshot, float | None]:
        now = self._clock()
        rows = await self._call(
            "SELECT instance_id, data, expires_at FROM interlink_instances "
            "WHERE service = ? AND expires_at > ?",
            (service, now),
        )
        found = []
        expires = None
        for instance_id, data, expiry in rows:
            key = self._record(service, instance_id)
            if not isinstance(expiry, int | float) or not math.isfinite(expiry):
                skip_record(service, key, f"its expiry is not a number: {expiry!r}")
                continue
            instance = instance_of(service, key, data)
            if instance is not None:
                found.append(instance)
                expires = expiry if expires is None else min(expires, expiry)
        return snapshot_of(found), (None if expires is None else expires - now)

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The rows of ``service`` that have not expired."""
        check_service(service)
        return list((await self._live(service))[0])

    async def services(self) -> list[str]:
        """The services with at least one live instance."""
        rows = await self._call(
            "SELECT DISTINCT service FROM interlink_instances WHERE expires_at > ? ORDER BY 1",
            (self._clock(),),
        )
        return [row[0] for row in rows]

    async def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """A snapshot now and after every change, polled every ``poll_interval``."""
        check_service(service)

        async def fetch() -> tuple[Snapshot, float | None]:
            return await self._live(service)

        async for snap in snapshots(fetch, asyncio.sleep, interval=self.poll_interval):
            yield snap

    async def purge(self) -> int:
        """Delete expired rows (lookups ignore them anyway); returns how many."""
        rows = await self._call(
            "DELETE FROM interlink_instances WHERE expires_at <= ? RETURNING service",
            (self._clock(),),
        )
        return len(rows)

    async def aclose(self) -> None:
        """Deregister this object's instances and close the file."""
        await self._close_leases()
        with self._lock:
            self._db.close()
