"""The SQL of the SQLite broker: synchronous, run only by the backend's worker thread.

Tables (one file, shared by every process on the machine that opens it):

- ``il_messages``: every published message once (its body in ``data``, its native headers as
  a JSON object in ``headers``), ``seq`` from AUTOINCREMENT (never reused, so
  cursors stay valid after old rows are deleted).
- ``il_groups``: one row per (topic, group) with its ``cursor``, the last ``seq`` moved into
  its queue. Fan-out is lazy: a lease first copies the next new messages into the group's
  queue, so publishing writes one row however many groups there are.
- ``il_queue``: the group's unfinished messages. ``visible_at`` is when the row may be leased
  (now for new rows, lease expiry for leased ones, retry time for nacked ones) and
  ``attempt`` counts leases; every ack / nack / dead-letter names the attempt it answers, so
  a consumer whose lease expired cannot touch the newer delivery.
- ``il_dlq``: dead letters with the original body, headers and the facts; kept
  ``dlq_max_age`` seconds and at most ``dlq_max_count`` per topic (``retain``).

The file gives its free pages back a batch at a time (``auto_vacuum=INCREMENTAL``, ``vacuum``)
and its WAL is cut back to ``wal_max_bytes`` after each checkpoint.

Per key, only the oldest queued row of a key may be leased (strict FIFO per key within a
group, across retries and competing consumers).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from interlink.messaging.envelope import FIELDS, DeadLetter, with_id

__all__ = ["Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS il_messages(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, id TEXT NOT NULL, key TEXT,
    data BLOB NOT NULL, published REAL NOT NULL);
CREATE INDEX IF NOT EXISTS il_messages_topic ON il_messages(topic, seq);
CREATE TABLE IF NOT EXISTS il_groups(
    gid INTEGER PRIMARY KEY, topic TEXT NOT NULL, grp TEXT NOT NULL, cursor INTEGER NOT NULL,
    UNIQUE (topic, grp));
CREATE TABLE IF NOT EXISTS il_queue(
    gid INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT, visible_at REAL NOT NULL,
    attempt INTEGER NOT NULL, PRIMARY KEY (gid, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS il_queue_key ON il_queue(gid, key, seq) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS il_dlq(
    n INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, id TEXT NOT NULL, grp TEXT,
    data BLOB NOT NULL, reason TEXT NOT NULL, error_type TEXT, attempts INTEGER NOT NULL,
    published REAL, dead_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS il_dlq_topic ON il_dlq(topic, n);
"""

_LEASABLE = """
SELECT q.seq, q.attempt + 1, m.id, m.data, m.headers
FROM il_queue q JOIN il_messages m ON m.seq = q.seq
WHERE q.gid = ?1 AND q.visible_at <= ?2
  AND (q.key IS NULL
       OR q.seq = (SELECT MIN(p.seq) FROM il_queue p WHERE p.gid = ?1 AND p.key = q.key))
ORDER BY q.seq LIMIT ?3
"""

#: The WAL's size after a checkpoint, at most (bytes).
WAL_MAX_BYTES = 16 * 1024 * 1024

Row = tuple[int, int, str, bytes, str | None]  # seq, attempt, message id, data, headers (JSON)

# Columns added since the first schema: (table, column, type), added to older files on open.
_ADDED = (("il_messages", "headers", "TEXT"), ("il_dlq", "headers", "TEXT"))


def _headers_text(headers: Mapping[str, str]) -> str | None:
    return json.dumps(headers, separators=(",", ":"), ensure_ascii=False) if headers else None


def headers_of(text: str | None) -> dict[str, str]:
    """The headers stored as ``_headers_text`` wrote them (none for NULL)."""
    if not text:
        return {}
    loaded = json.loads(text)
    return loaded if isinstance(loaded, dict) else {}


class Store:
    """The broker's operations on one connection. Writers call ``write()`` first, which opens
    the (IMMEDIATE) transaction the worker commits after its batch."""

    def __init__(
        self, path: str, *, synchronous: str = "NORMAL", wal_max_bytes: int = WAL_MAX_BYTES
    ) -> None:
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        # Free pages go back to the file system a batch at a time (``vacuum``). Takes effect
        # on a new file only: an existing one keeps its mode until a full VACUUM.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # After each checkpoint the WAL is cut back to this size (it grows while readers keep
        # a checkpoint from finishing, and would stay that size without a limit).
        db.execute(f"PRAGMA journal_size_limit={int(wal_max_bytes)}")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=30000")
        self.db = db
        db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
        for table, column, kind in _ADDED:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                # (another process may have added it first)
                with contextlib.suppress(sqlite3.OperationalError):
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._writes = 0
        self._idle: dict[int, tuple[int, int, float]] = {}  # gid -> (data_version, writes, next)

    def write(self) -> None:
        """Open the batch's write transaction, once; count every write (an empty lease's
        cached answer must not outlive a settle later in the same batch)."""
        self._writes += 1
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self, topic: str, rows: Sequence[tuple[str, str | None, bytes, Mapping[str, str]]]
    ) -> None:
        """Insert (id, key, data, headers) rows."""
        self.write()
        now = time.time()
        self.db.executemany(
            "INSERT INTO il_messages(topic, id, key, data, published, headers) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (topic, mid, key, data, now, _headers_text(headers))
                for mid, key, data, headers in rows
            ],
        )

    # -- groups and leases --------------------------------------------------------------

    def ensure_group(self, topic: str, group: str) -> int:
        """The group's id; a new group starts after the newest message, unless it is the
        topic's first group (then it takes everything published so far)."""
        row = self.db.execute(
            "SELECT gid FROM il_groups WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchone()
        if row is not None:
            return int(row[0])
        self.write()
        self.db.execute(
            "INSERT OR IGNORE INTO il_groups(topic, grp, cursor) VALUES (?1, ?2, "
            "CASE WHEN EXISTS (SELECT 1 FROM il_groups WHERE topic = ?1) "
            "THEN (SELECT COALESCE(MAX(seq), 0) FROM il_messages) ELSE 0 END)",
            (topic, group),
        )
        row = self.db.execute(
            "SELECT gid FROM il_groups WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchone()
        return int(row[0])

    def lease(
        self, gid: int, topic: str, limit: int, visibility: float
    ) -> tuple[list[Row], float | None]:
        """Lease up to ``limit`` rows; with none, also say when one may become visible."""
        now = time.time()
        db = self.db
        version = db.execute("PRAGMA data_version").fetchone()[0]
        idle = self._idle.get(gid)
        if idle is not None and idle[0] == version and idle[1] == self._writes and now < idle[2]:
            return [], idle[2]  # nothing changed since the last empty look
        self.write()
        cursor = db.execute("SELECT cursor FROM il_groups WHERE gid = ?", (gid,)).fetchone()[0]
        fresh = db.execute(
            "SELECT seq, key FROM il_messages WHERE topic = ? AND seq > ? ORDER BY seq LIMIT ?",
            (topic, cursor, max(limit, 64)),
        ).fetchall()
        if fresh:
            db.executemany(
                "INSERT OR IGNORE INTO il_queue(gid, seq, key, visible_at, attempt) "
                "VALUES (?, ?, ?, 0, 0)",
                [(gid, seq, key) for seq, key in fresh],
            )
            db.execute("UPDATE il_groups SET cursor = ? WHERE gid = ?", (fresh[-1][0], gid))
        rows: list[Row] = db.execute(_LEASABLE, (gid, now, limit)).fetchall()
        if rows:
            self._idle.pop(gid, None)
            db.executemany(
                "UPDATE il_queue SET visible_at = ?, attempt = ? WHERE gid = ? AND seq = ?",
                [(now + visibility, attempt, gid, seq) for seq, attempt, *_ in rows],
            )
            return rows, None
        nxt = db.execute("SELECT MIN(visible_at) FROM il_queue WHERE gid = ?", (gid,)).fetchone()[0]
        next_at = float("inf") if nxt is None else float(nxt)
        # Our own commit of this (empty) lease moves no data_version; the next look compares.
        self._idle[gid] = (version, self._writes, next_at)
        return [], None if nxt is None else next_at

    def settle(self, ops: Iterable[tuple[int, int, int, float | None]]) -> None:
        """Acks (visible_at None) and nacks: (gid, seq, attempt, visible_at)."""
        self.write()
        acks, nacks = [], []
        for gid, seq, attempt, visible_at in ops:
            if visible_at is None:
                acks.append((gid, seq, attempt))
            else:
                nacks.append((visible_at, gid, seq, attempt))
        if acks:
            self.db.executemany(
                "DELETE FROM il_queue WHERE gid = ? AND seq = ? AND attempt = ?", acks
            )
        if nacks:
            self.db.executemany(
                "UPDATE il_queue SET visible_at = ? WHERE gid = ? AND seq = ? AND attempt = ?",
                nacks,
            )

    def release(self, rows: Iterable[tuple[int, int, int]]) -> None:
        """Give back leased rows nobody handled, without counting the lease as an attempt."""
        self.write()
        self.db.executemany(
            "UPDATE il_queue SET visible_at = 0, attempt = attempt - 1 "
            "WHERE gid = ? AND seq = ? AND attempt = ?",
            list(rows),
        )

    def extend(self, rows: Iterable[tuple[int, int, int]], visibility: float) -> None:
        """Push the lease expiry of rows still being handled."""
        until = time.time() + visibility
        batch = [(until, gid, seq, attempt) for gid, seq, attempt in rows]
        if batch:
            self.write()
            self.db.executemany(
                "UPDATE il_queue SET visible_at = ? WHERE gid = ? AND seq = ? AND attempt = ?",
                batch,
            )

    def collect(self, topics: Iterable[str]) -> None:
        """Delete messages every group of their topic is done with."""
        self.write()
        for topic in topics:
            self.db.execute(
                "DELETE FROM il_messages WHERE topic = ?1 "
                "AND seq <= (SELECT MIN(cursor) FROM il_groups WHERE topic = ?1) "
                "AND seq < COALESCE((SELECT MIN(q.seq) FROM il_queue q JOIN il_groups g "
                "ON g.gid = q.gid WHERE g.topic = ?1), 9223372036854775807)",
                (topic,),
            )

    # -- dead letters -------------------------------------------------------------------

    def dead_letter(  # noqa: PLR0917 - run through the worker's positional submit()
        self,
        row: tuple[int, int, int],
        group: str,
        reason: str,
        error_type: str | None,
        published: float | None,
        max_count: int | None = None,
    ) -> None:
        """Move the (gid, seq, attempt) row to the DLQ, if this delivery still owns it; keep
        at most ``max_count`` letters of its topic (the newest)."""
        self.write()
        gid, seq, attempt = row
        cur = self.db.execute(
            "DELETE FROM il_queue WHERE gid = ? AND seq = ? AND attempt = ?", (gid, seq, attempt)
        )
        if cur.rowcount:
            self.db.execute(
                "INSERT INTO il_dlq(topic, id, grp, data, reason, error_type, attempts, "
                "published, dead_at, headers) SELECT topic, id, ?, data, ?, ?, ?, "
                "COALESCE(?, published), ?, headers "
                "FROM il_messages WHERE seq = ?",
                (group, reason, error_type, attempt, published, time.time(), seq),
            )
            if max_count is not None:
                self.db.execute(
                    "DELETE FROM il_dlq WHERE topic = (SELECT topic FROM il_messages "
                    "WHERE seq = ?1) AND n <= (SELECT n FROM il_dlq WHERE topic = "
                    "(SELECT topic FROM il_messages WHERE seq = ?1) ORDER BY n DESC "
                    "LIMIT 1 OFFSET ?2)",
                    (seq, max_count),
                )

    def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        rows = self.db.execute(
            "SELECT id, data, reason, error_type, attempts, grp, published, dead_at, headers "
            "FROM il_dlq "
            "WHERE topic = ? ORDER BY n LIMIT ?",
            (topic, limit),
        ).fetchall()
        return [
            DeadLetter(
                id=r[0],
                topic=topic,
                data=r[1],
                reason=r[2],
                error_type=r[3],
                attempts=r[4],
                group=r[5],
                published_at=r[6],
                dead_at=r[7],
                headers=headers_of(r[8]),
            )
            for r in rows
        ]

    def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Back to the topic, same bytes and id, once per id, and out of the DLQ, in one
        transaction."""
        self.write()
        rows: list[Any] = self.db.execute(
            "SELECT n, id, data, headers FROM il_dlq WHERE topic = ? ORDER BY n", (topic,)
        ).fetchall()
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r[1] in wanted]
        again = []
        done: set[str] = set()
        for _, mid, data, text in rows:
            if mid in done:  # one message per id, however many letters hold it
                continue
            done.add(mid)
            headers = with_id(FIELDS, headers_of(text), mid)
            again.append((mid, headers.get(FIELDS.key), data, headers))
        self.publish(topic, again)
        self.db.executemany("DELETE FROM il_dlq WHERE n = ?", [(r[0],) for r in rows])
        return len(again)

    def retain(self, max_age: float, max_count: int) -> None:
        """Drop dead letters older than ``max_age`` seconds, and the oldest of any topic
        that holds more than ``max_count``."""
        self.write()
        self.db.execute("DELETE FROM il_dlq WHERE dead_at < ?", (time.time() - max_age,))
        over = self.db.execute(
            "SELECT topic, COUNT(*) FROM il_dlq GROUP BY topic HAVING COUNT(*) > ?", (max_count,)
        ).fetchall()
        for topic, _ in over:
            self.db.execute(
                "DELETE FROM il_dlq WHERE topic = ?1 AND n <= (SELECT n FROM il_dlq "
                "WHERE topic = ?1 ORDER BY n DESC LIMIT 1 OFFSET ?2)",
                (topic, max_count),
            )

    def vacuum(self, pages: int) -> None:
        """Give up to ``pages`` free pages back to the file system (incremental vacuum)."""
        self.write()
        self.db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()

    def groups(self, topic: str) -> list[str]:
        rows = self.db.execute("SELECT grp FROM il_groups WHERE topic = ? ORDER BY grp", (topic,))
        return [str(r[0]) for r in rows]

    def lag(self, topic: str, group: str) -> tuple[int, float | None]:
        """The group's unacknowledged messages (queued for it, or published past its cursor)
        and the oldest one's publish time."""
        row = self.db.execute(
            "SELECT gid, cursor FROM il_groups WHERE topic = ? AND grp = ?", (topic, group)
        ).fetchone()
        if row is None:
            return 0, None
        queued, queued_oldest = self.db.execute(
            "SELECT COUNT(*), MIN(m.published) FROM il_queue q JOIN il_messages m "
            "ON m.seq = q.seq WHERE q.gid = ?",
            (row[0],),
        ).fetchone()
        fresh, fresh_oldest = self.db.execute(
            "SELECT COUNT(*), MIN(published) FROM il_messages WHERE topic = ? AND seq > ?",
            (topic, row[1]),
        ).fetchone()
        times = [t for t in (queued_oldest, fresh_oldest) if t is not None]
        return int(queued) + int(fresh), min(times) if times else None

    def dlq_count(self, topic: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM il_dlq WHERE topic = ?", (topic,)).fetchone()
        return int(row[0])

    def dlq_purge(self, topic: str) -> int:
        self.write()
        return self.db.execute("DELETE FROM il_dlq WHERE topic = ?", (topic,)).rowcount

    def topics(self) -> list[str]:
        names = {r[0] for r in self.db.execute("SELECT DISTINCT topic FROM il_messages")}
        names.update(r[0] for r in self.db.execute("SELECT DISTINCT topic FROM il_groups"))
        names.update(f"{r[0]}.dlq" for r in self.db.execute("SELECT DISTINCT topic FROM il_dlq"))
        return sorted(names)
