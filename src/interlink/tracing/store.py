"""The embedded trace store: finished spans in one SQLite file, and the queries an operator asks.

No collector is needed to see a trace: ``setup(service, exporter="sqlite:///traces.db")`` makes
every process of a system write its spans into the same file, and the dashboard and the CLI read
it. Writers are the export threads of several processes, so the file runs in WAL mode with a busy
timeout, and every export is one short transaction.

Two tables answer the questions:

- ``spans`` holds every span, indexed by trace id (a waterfall reads one trace's spans).
- ``traces`` holds one summary row per trace (first start, last end, span and error counts, the
  root's name and service, the correlation id), merged with each batch's figures for the traces
  it touched. Lists ("the slowest", "errors of the order service in the last hour", "the trace of
  request X") read only this table and ``trace_services`` through indexes, so they stay fast with
  100,000 traces stored: the cost of a page does not grow with the number of traces.

Retention is by age and by count of traces (``prune``); the exporter prunes every few hundred
batches, so a long-running system keeps a bounded file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from interlink._sqlite_thread import sqlite_path

__all__ = ["Edge", "SpanRecord", "SpanRow", "TraceStore", "TraceSummary", "dumps"]

# Spans are appended in time order into a rowid table and found by this index: a third of the
# write cost of a table clustered on (trace_id, span_id), whose random keys split pages. Files
# written by earlier versions keep their clustered table (the index would only duplicate it).
_SPANS_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id, span_id)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    kind TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    correlation_id TEXT,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    spans INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    root_name TEXT NOT NULL,
    root_service TEXT NOT NULL,
    rooted INTEGER NOT NULL,
    correlation_id TEXT
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE INDEX IF NOT EXISTS traces_by_duration ON traces (duration_ns);
CREATE INDEX IF NOT EXISTS traces_failed_by_start ON traces (start_ns) WHERE errors > 0;
CREATE INDEX IF NOT EXISTS traces_by_correlation ON traces (correlation_id);
CREATE TABLE IF NOT EXISTS trace_services (
    service TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    PRIMARY KEY (service, trace_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS trace_services_by_start ON trace_services (service, start_ns);
CREATE INDEX IF NOT EXISTS trace_services_by_trace ON trace_services (trace_id);
"""

# A batch's figures for one trace merge into its row: extremes widen, counts add up, and the root
# is the parentless span (or, until it arrives, the earliest span seen).
_MERGE = """
INSERT INTO traces (trace_id, start_ns, end_ns, duration_ns, spans, errors, root_name,
                    root_service, rooted, correlation_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trace_id) DO UPDATE SET
    root_name = CASE WHEN excluded.rooted > rooted
        OR (excluded.rooted = rooted AND excluded.start_ns < start_ns)
        THEN excluded.root_name ELSE root_name END,
    root_service = CASE WHEN excluded.rooted > rooted
        OR (excluded.rooted = rooted AND excluded.start_ns < start_ns)
        THEN excluded.root_service ELSE root_service END,
    rooted = MAX(rooted, excluded.rooted),
    start_ns = MIN(start_ns, excluded.start_ns),
    end_ns = MAX(end_ns, excluded.end_ns),
    duration_ns = MAX(end_ns, excluded.end_ns) - MIN(start_ns, excluded.start_ns),
    spans = spans + excluded.spans,
    errors = errors + excluded.errors,
    correlation_id = COALESCE(correlation_id, excluded.correlation_id)
"""
_MERGE_SERVICE = """
INSERT INTO trace_services (service, start_ns, trace_id) VALUES (?, ?, ?)
ON CONFLICT (service, trace_id) DO UPDATE SET start_ns = MIN(start_ns, excluded.start_ns)
"""

#: A span's row: what ``add_rows`` takes (``to_row`` in ``interlink.tracing.setup`` makes them
#: straight from SDK spans, without a ``SpanRecord`` in between).
SpanRow = tuple[
    str, str, str | None, str, str, str, int, int, str, str | None, str | None, str, str, str
]

_SPAN_COLUMNS = (
    "trace_id, span_id, parent_id, name, service, kind, start_ns, end_ns, status, "
    "status_message, correlation_id, attributes, events, links"
)

_LIST_COLUMNS = (
    "t.trace_id, t.start_ns, t.end_ns, t.duration_ns, t.spans, t.errors, t.root_name, "
    "t.root_service, (SELECT GROUP_CONCAT(service) FROM trace_services s "
    "WHERE s.trace_id = t.trace_id), t.correlation_id"
)

Order = Literal["recent", "slowest"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanRecord:
    """One finished span, as stored: ids in lower-case hex, times in ns since the epoch."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str = "unset"  # "unset", "ok" or "error"
    status_message: str | None = None
    correlation_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    #: ``[{"name": ..., "at_ns": ..., "attributes": {...}}, ...]``
    events: list[dict[str, Any]] = field(default_factory=list)
    #: ``[{"trace_id": ..., "span_id": ...}, ...]``: spans this one follows from, not under
    links: list[dict[str, str]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        """How long the span lasted, in milliseconds."""
        return (self.end_ns - self.start_ns) / 1e6


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSummary:
    """One trace at a glance: what a trace list shows per row."""

    trace_id: str
    start_ns: int
    end_ns: int
    duration_ns: int
    spans: int
    errors: int
    root_name: str
    root_service: str
    services: tuple[str, ...]
    correlation_id: str | None

    @property
    def duration_ms(self) -> float:
        """The trace's span from first start to last end, in milliseconds."""
        return self.duration_ns / 1e6


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    """Calls from one service to another seen in the stored spans."""

    source: str
    target: str
    kind: Literal["sync", "async"]
    calls: int
    errors: int


class TraceStore:
    """Spans in a SQLite file, safe to share between processes and between threads.

    Open with ``TraceStore.from_url("sqlite:///traces.db")`` (``sqlite:///:memory:`` for a
    private store in tests). Writers call ``add``; readers call ``trace``, ``traces`` and
    ``count``. ``prune`` applies retention.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn = self._connect()

    @classmethod
    def from_url(cls, url: str) -> TraceStore:
        """Open the store a ``sqlite:///path`` URL names (created on first use).

        ``?busy_timeout=S`` sets how long a writer waits for another process's write lock.
        """
        path = sqlite_path(url)
        parts = urlsplit(url)
        options = parse_qs(parts.query)
        busy = 5.0
        if "busy_timeout" in options:
            raw = options["busy_timeout"][-1]
            try:
                busy = float(raw)
            except ValueError:
                raise ValueError(f"'busy_timeout' must be a number of seconds: {raw!r}") from None
            if busy < 0:
                raise ValueError(f"'busy_timeout' must be >= 0: {raw!r}")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return cls(path, busy_timeout=busy)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            check_same_thread=False,
            isolation_level=None,  # explicit BEGIN / COMMIT below
        )
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)  # every statement is IF NOT EXISTS: safe in every process
        (ddl,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spans'").fetchone()
        if "WITHOUT ROWID" not in ddl:
            conn.execute(_SPANS_INDEX)
        return conn

    def reopen(self) -> None:
        """A fresh connection: a forked child must not share its parent's SQLite handle."""
        self._lock = threading.Lock()
        self._conn = self._connect()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: two processes never both hold a read
        # lock and deadlock upgrading it
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; the file stays."""
        with self._lock:
            self._conn.close()

    # -- writing -------------------------------------------------------------------------------

    def add(self, spans: Iterable[SpanRecord]) -> int:
        """Store ``spans`` and merge them into their traces' summaries; returns how many."""
        return self.add_rows(
            [
                (
                    s.trace_id,
                    s.span_id,
                    s.parent_id,
                    s.name,
                    s.service,
                    s.kind,
                    s.start_ns,
                    s.end_ns,
                    s.status,
                    s.status_message,
                    s.correlation_id,
                    dumps(s.attributes),
                    dumps(s.events),
                    dumps(s.links),
                )
                for s in spans
            ]
        )

    def add_rows(self, rows: Sequence[SpanRow]) -> int:
        """``add`` for spans already in row form (the exporter's path: no objects between the
        SDK's span and the row). A span stored twice (an exporter's retry) counts once more in
        its trace's span count; nothing else changes."""
        if not rows:
            return 0
        # per trace: start, end, spans, errors, root name, root service, rooted, correlation id
        traces: dict[str, list[Any]] = {}
        services: dict[tuple[str, str], int] = {}
        for r in rows:
            tid, parent, start, end = r[0], r[2], r[6], r[7]
            rooted = 1 if parent is None else 0
            t = traces.get(tid)
            if t is None:
                traces[tid] = [start, end, 1, r[8] == "error", r[3], r[4], rooted, r[10]]
            else:
                if rooted > t[6] or (rooted == t[6] and start < t[0]):
                    t[4], t[5], t[6] = r[3], r[4], rooted
                t[0] = min(t[0], start)
                t[1] = max(t[1], end)
                t[2] += 1
                t[3] += r[8] == "error"
                t[7] = t[7] or r[10]
            key = (r[4], tid)
            if start < services.get(key, start + 1):
                services[key] = start
        merges = [
            (tid, t[0], t[1], t[1] - t[0], t[2], int(t[3]), t[4], t[5], t[6], t[7])
            for tid, t in traces.items()
        ]
        with self._lock, self._write() as c:
            c.executemany(
                f"INSERT OR REPLACE INTO spans ({_SPAN_COLUMNS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            c.executemany(_MERGE, merges)
            c.executemany(
                _MERGE_SERVICE, [(svc, start, tid) for (svc, tid), start in services.items()]
            )
        return len(rows)

    def prune(
        self,
        *,
        max_age: float | None = None,
        max_traces: int | None = None,
        now: float | None = None,
    ) -> int:
        """Delete traces older than ``max_age`` seconds and all but the newest ``max_traces``.

        Returns how many traces were deleted. ``now`` (seconds since the epoch) is for tests.
        """
        victims: set[str] = set()
        with self._lock:
            if max_age is not None:
                cutoff = int(((time.time() if now is None else now) - max_age) * 1e9)
                victims.update(
                    r[0]
                    for r in self._conn.execute(
                        "SELECT trace_id FROM traces WHERE start_ns < ?", (cutoff,)
                    )
                )
            if max_traces is not None:
                victims.update(
                    r[0]
                    for r in self._conn.execute(
                        "SELECT trace_id FROM traces ORDER BY start_ns DESC LIMIT -1 OFFSET ?",
                        (max_traces,),
                    )
                )
            if not victims:
                return 0
            doomed = [(t,) for t in victims]
            with self._write() as c:
                c.executemany("DELETE FROM spans WHERE trace_id = ?", doomed)
                c.executemany("DELETE FROM traces WHERE trace_id = ?", doomed)
                c.executemany("DELETE FROM trace_services WHERE trace_id = ?", doomed)
        return len(victims)

    # -- reading -------------------------------------------------------------------------------

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every stored span of one trace, in start order (a waterfall's rows)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns",
                (trace_id.lower(),),
            ).fetchall()
        return [_span(r) for r in rows]

    def summary(self, trace_id: str) -> TraceSummary | None:
        """The summary row of one trace, or None when it is not stored."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_LIST_COLUMNS} FROM traces t WHERE trace_id = ?", (trace_id.lower(),)
            ).fetchone()
        return None if row is None else _summary(row)

    def traces(
        self,
        *,
        service: str | None = None,
        correlation_id: str | None = None,
        errors: bool = False,
        since: float | None = None,
        until: float | None = None,
        order: Order = "recent",
        limit: int = 50,
        offset: int = 0,
    ) -> list[TraceSummary]:
        """Trace summaries matching every filter given, newest (or slowest) first.

        ``service`` matches a trace that any span of that service is part of; ``since`` and
        ``until`` are seconds since the epoch, compared with the trace's start.
        """
        if order not in ("recent", "slowest"):
            raise ValueError(f"'order' must be 'recent' or 'slowest': {order!r}")
        if limit < 1 or offset < 0:
            raise ValueError(f"'limit' must be >= 1 and 'offset' >= 0: {limit!r}, {offset!r}")
        where: list[str] = []
        args: list[object] = []
        source = "traces t"
        if service is not None:
            source = "trace_services ts JOIN traces t ON t.trace_id = ts.trace_id"
            where.append("ts.service = ?")
            args.append(service)
        if correlation_id is not None:
            where.append("t.correlation_id = ?")
            args.append(correlation_id)
        if errors:
            where.append("t.errors > 0")
        start_col = "ts.start_ns" if service is not None else "t.start_ns"
        if since is not None:
            where.append(f"{start_col} >= ?")
            args.append(int(since * 1e9))
        if until is not None:
            where.append(f"{start_col} < ?")
            args.append(int(until * 1e9))
        sql = f"SELECT {_LIST_COLUMNS} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + (f"{start_col} DESC" if order == "recent" else "t.duration_ns DESC")
        sql += " LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [_summary(r) for r in rows]

    def edges(self, *, since: float | None = None, sample: int = 2000) -> list[Edge]:
        """Who called whom in the newest ``sample`` traces started since ``since`` (seconds since
        the epoch; default: the last 5 minutes).

        An edge is a span of one service whose parent belongs to another: a server span under a
        client span is a synchronous call, a consumer span under whatever published the message
        (a producer span, or the request that wrote an outbox row) is an asynchronous one. The
        sample bounds the work: a busy system's map is drawn from its latest traffic.
        """
        start = int(((time.time() - 300) if since is None else since) * 1e9)
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.service, c.service, c.kind = 'consumer', COUNT(*), "
                "SUM(c.status = 'error') FROM "
                "(SELECT trace_id FROM traces WHERE start_ns >= ? "
                " ORDER BY start_ns DESC LIMIT ?) t "
                "JOIN spans c ON c.trace_id = t.trace_id "
                "JOIN spans p ON p.trace_id = c.trace_id AND p.span_id = c.parent_id "
                "WHERE p.service != c.service "
                "GROUP BY 1, 2, 3 ORDER BY 1, 2",
                (start, sample),
            ).fetchall()
        return [
            Edge(
                source=r[0], target=r[1], kind="async" if r[2] else "sync", calls=r[3], errors=r[4]
            )
            for r in rows
        ]

    def count(self) -> int:
        """How many traces are stored."""
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM traces").fetchone()
        return int(row[0])

    def services(self) -> list[str]:
        """Every service that has spans stored, sorted."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT service FROM trace_services ORDER BY service"
            ).fetchall()
        return [str(r[0]) for r in rows]


_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


def dumps(value: object) -> str:
    """Compact JSON for a stored attributes, events or links column ("{}"/"[]" when empty)."""
    if not value:
        return "[]" if isinstance(value, list | tuple) else "{}"
    return _encode(value)


_FIELDS: dict[type, tuple[str, ...]] = {
    record: tuple(f.name for f in fields(record)) for record in (SpanRecord, TraceSummary)
}


def _named(row: Sequence[Any], record: type) -> dict[str, Any]:
    """A row's values by field name: ``_SPAN_COLUMNS`` and ``_LIST_COLUMNS`` select the
    columns in the order of ``record``'s fields, so the names are written once, there."""
    return dict(zip(_FIELDS[record], row, strict=True))


def _span(row: Sequence[Any]) -> SpanRecord:
    values = _named(row, SpanRecord)
    for column in ("attributes", "events", "links"):  # JSON text
        values[column] = json.loads(values[column])
    return SpanRecord(**values)


def _summary(row: Sequence[Any]) -> TraceSummary:
    values = _named(row, TraceSummary)
    values["errors"] = values["errors"] or 0
    services = values["services"]  # GROUP_CONCAT's text, or NULL
    values["services"] = tuple(sorted(str(services).split(","))) if services else ()
    return TraceSummary(**values)
