"""The embedded trace store: finished spans in one SQLite file, and the queries an operator asks.

No collector is needed to see a trace: ``setup(service, exporter="sqlite:///traces.db")`` makes
every process of a system write its spans into the same file, and the dashboard and the CLI read
it. Writers are the export threads of several processes, so the file runs in WAL mode with a busy
timeout, and every export is one short transaction. The file is telemetry: it is written with
``synchronous=NORMAL`` (a power cut may lose the last exports, never the file), and a file
written by an earlier layout is started afresh (with a warning in the log), not migrated.

Two tables answer the questions:

- ``spans`` holds, per trace and per export, the spans of that trace the export wrote, as one
  compact JSON array, with the export's service, its first start and its span and error counts
  (a waterfall reads one trace's few rows by the index on the trace id; a service's traces are
  found by the index on service and start). A row per span, each with its own index entry and a
  dozen columns to bind, cost the writer more than all the rest of its work.
- ``traces`` holds one summary row per trace: first start, last end, whether any span failed,
  the root's name and service, the correlation id. An export's figures widen it only when they
  change it (an export inside the trace's known extent, the usual case, leaves it untouched: an
  update of indexed columns costs even when nothing changes); the span and error counts and the
  services are summed from the ``spans`` rows of the listed page when it is read. Lists ("the
  slowest", "errors of the order service in the last hour", "the trace of request X") go
  through indexes, so they stay fast with 100,000 traces stored: the cost of a page does not
  grow with the number of traces.

Retention is by age and by count of traces (``prune``); the exporter prunes every few hundred
batches, so a long-running system keeps a bounded file.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from interlink._sqlite_thread import sqlite_path
from interlink.tracing.spans import CORRELATION_ATTRIBUTE

__all__ = ["Edge", "Record", "SpanRecord", "TraceStore", "TraceSummary", "dumps"]

_log = logging.getLogger("interlink.tracing")

#: The layout this code writes, kept in the file's ``user_version``; a file with another one is
#: started afresh (it holds telemetry, not data worth a migration).
LAYOUT: int = 3

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spans (
        trace_id TEXT NOT NULL,
        service TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        count INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        spans TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id)",
    "CREATE INDEX IF NOT EXISTS spans_by_service ON spans (service, start_ns)",
    """CREATE TABLE IF NOT EXISTS traces (
        trace_id TEXT PRIMARY KEY,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        duration_ns INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        root_name TEXT NOT NULL,
        root_service TEXT NOT NULL,
        rooted INTEGER NOT NULL,
        correlation_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns)",
    "CREATE INDEX IF NOT EXISTS traces_by_duration ON traces (duration_ns)",
    "CREATE INDEX IF NOT EXISTS traces_failed_by_start ON traces (start_ns) WHERE failed > 0",
    "CREATE INDEX IF NOT EXISTS traces_by_correlation ON traces (correlation_id) "
    "WHERE correlation_id IS NOT NULL",
)
# the tables of every layout so far (layout 2 had ``trace_services``), dropped when the file
# is started afresh
_TABLES = ("spans", "traces", "trace_services")

# A batch's figures for one trace merge into its row: extremes widen, a failure sticks, and the
# root is the parentless span (or, until it arrives, the earliest span seen). Only a batch that
# changes something updates the row: most fall inside what is known already.
_MERGE = """
INSERT INTO traces (trace_id, start_ns, end_ns, duration_ns, failed, root_name,
                    root_service, rooted, correlation_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
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
    failed = MAX(failed, excluded.failed),
    correlation_id = COALESCE(correlation_id, excluded.correlation_id)
WHERE excluded.start_ns < start_ns OR excluded.end_ns > end_ns OR excluded.rooted > rooted
    OR excluded.failed > failed OR (correlation_id IS NULL AND excluded.correlation_id IS NOT NULL)
"""

# every service, one index step each: not a walk over every trace's entry
_SERVICES = (
    "WITH RECURSIVE found (service) AS (SELECT MIN(service) FROM spans "
    "UNION ALL SELECT (SELECT MIN(service) FROM spans WHERE service > found.service) "
    "FROM found WHERE found.service IS NOT NULL) "
    "SELECT service FROM found WHERE service IS NOT NULL"
)

#: A finished span as plain values (what the recorder hands the store, ``marshal``-able):
#: trace id, span id, parent span id, name, kind, start, end, status, status message,
#: attributes, events as (name, ns, attributes), links as (trace id, span id).
Record = tuple[
    int, int, "int | None", str, str, int, int, str, "str | None", dict[str, Any],
    tuple[tuple[str, int, dict[str, Any]], ...], tuple[tuple[int, int], ...],
]  # fmt: skip

_LIST_COLUMNS = (
    "t.trace_id, t.start_ns, t.end_ns, t.duration_ns, t.root_name, t.root_service, t.correlation_id"
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
        # per trace listed by ``edges``: its rows' ids, and the calls they hold
        self._calls_seen: dict[str, tuple[set[int], list[tuple[str, str, bool, bool]]]] = {}

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
        if conn.execute("PRAGMA user_version").fetchone()[0] != LAYOUT:
            self._lay_out(conn)
        return conn

    def _lay_out(self, conn: sqlite3.Connection) -> None:
        # under the write lock: the processes of a system open the file at the same time, and
        # only the first lays it out
        conn.execute("BEGIN IMMEDIATE")
        try:
            (layout,) = conn.execute("PRAGMA user_version").fetchone()
            if layout != LAYOUT:
                found = conn.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                    f"({', '.join('?' * len(_TABLES))})",
                    _TABLES,
                ).fetchone()[0]
                if found:
                    _log.warning(
                        "trace store %s was written by an earlier layout (%d); its traces are "
                        "dropped and the file starts afresh in layout %d",
                        self.path,
                        layout,
                        LAYOUT,
                    )
                    for table in _TABLES:
                        conn.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {LAYOUT}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

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
        by_service: dict[str, list[Record]] = {}
        for s in spans:
            attributes = s.attributes
            if s.correlation_id is not None and CORRELATION_ATTRIBUTE not in attributes:
                attributes = {**attributes, CORRELATION_ATTRIBUTE: s.correlation_id}
            by_service.setdefault(s.service, []).append(
                (
                    int(s.trace_id, 16),
                    int(s.span_id, 16),
                    None if s.parent_id is None else int(s.parent_id, 16),
                    s.name,
                    s.kind,
                    s.start_ns,
                    s.end_ns,
                    s.status,
                    s.status_message,
                    attributes,
                    tuple((e["name"], e["at_ns"], e.get("attributes") or {}) for e in s.events),
                    tuple((int(k["trace_id"], 16), int(k["span_id"], 16)) for k in s.links),
                )
            )
        return sum(self.add_records(records, service) for service, records in by_service.items())

    def add_records(self, records: Sequence[Record], service: str) -> int:
        """``add`` for the spans of one service as the recorder hands them over (no object, id
        text or column per span: a trace's spans are grouped and their values encoded as they
        are, once). The correlation id of a span is its ``interlink.correlation_id`` attribute.
        A span stored twice (an exporter's retry) is read back twice."""
        if not records:
            return 0
        groups: dict[int, list[Record]] = {}
        for r in records:
            group = groups.get(r[0])
            if group is None:
                groups[r[0]] = [r]
            else:
                group.append(r)
        corr = CORRELATION_ATTRIBUTE
        blocks = []
        merges = []
        for tid, spans in groups.items():
            trace_id = f"{tid:032x}"
            first = root = spans[0]
            start, end, errors = first[5], first[6], int(first[7] == "error")
            cid = first[9].get(corr) if first[9] else None
            for r in spans[1:] if len(spans) > 1 else ():
                start = min(start, r[5])
                end = max(end, r[6])
                errors += r[7] == "error"
                if (r[2] is None, -r[5]) > (root[2] is None, -root[5]):
                    root = r
                if cid is None and r[9]:
                    cid = r[9].get(corr)
            blocks.append(
                (trace_id, service, start, len(spans), errors, "".join(_chunks(spans, 0)))
            )
            merges.append(
                (
                    trace_id, start, end, end - start, int(errors > 0), root[3],
                    service, int(root[2] is None), None if cid is None else str(cid),
                )
            )  # fmt: skip
        with self._lock, self._write() as c:
            c.executemany(
                "INSERT INTO spans (trace_id, service, start_ns, count, errors, spans) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                blocks,
            )
            c.executemany(_MERGE, merges)
        return len(records)

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
        return len(victims)

    # -- reading -------------------------------------------------------------------------------

    def trace(self, trace_id: str) -> list[SpanRecord]:
        """Every stored span of one trace, in start order (a waterfall's rows)."""
        trace_id = trace_id.lower()
        with self._lock:
            rows = self._conn.execute(
                "SELECT service, spans FROM spans WHERE trace_id = ?", (trace_id,)
            ).fetchall()
        found = [_span(service, r) for service, text in rows for r in json.loads(text)]
        found.sort(key=lambda s: s.start_ns)
        return found

    def summary(self, trace_id: str) -> TraceSummary | None:
        """The summary row of one trace, or None when it is not stored."""
        with self._lock:
            found = self._summaries(
                self._conn.execute(
                    f"SELECT {_LIST_COLUMNS} FROM traces t WHERE trace_id = ?",
                    (trace_id.lower(),),
                ).fetchall()
            )
        return found[0] if found else None

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
        ``until`` are seconds since the epoch, compared with the trace's start (with a
        ``service``: with the start of that service's spans, and the newest first are those the
        service wrote last).
        """
        if order not in ("recent", "slowest"):
            raise ValueError(f"'order' must be 'recent' or 'slowest': {order!r}")
        if limit < 1 or offset < 0:
            raise ValueError(f"'limit' must be >= 1 and 'offset' >= 0: {limit!r}, {offset!r}")
        where: list[str] = []
        args: list[object] = []
        if correlation_id is not None:
            where.append("t.correlation_id = ?")
            args.append(correlation_id)
        if errors:
            where.append("t.failed > 0")
        # with a service, the times are those of the service's spans: when it took part
        start_col = "s.start_ns" if service is not None else "t.start_ns"
        # ``+`` keeps SQLite from walking the service's every row for each trace tried: the
        # trace's own few rows are found by its id
        spans_where = ["s.trace_id = t.trace_id", "+s.service = ?"]
        spans_args: list[object] = [service]
        for bound, op in ((since, ">="), (until, "<")):
            if bound is not None:
                (spans_where if service is not None else where).append(f"{start_col} {op} ?")
                (spans_args if service is not None else args).append(int(bound * 1e9))
        by_part = service is not None and order == "recent"
        if by_part:
            # a service's rows newest first, through its index; a trace with several rows of
            # the service is listed at its newest, once
            sql = f"SELECT {_LIST_COLUMNS} FROM spans s JOIN traces t ON t.trace_id = s.trace_id"
            where = ["s.service = ?", *spans_where[2:], *where]
            args = spans_args + args
        else:
            sql = f"SELECT {_LIST_COLUMNS} FROM traces t"
            if service is not None:
                where.append(f"EXISTS (SELECT 1 FROM spans s WHERE {' AND '.join(spans_where)})")
                args += spans_args
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + (f"{start_col} DESC" if order == "recent" else "t.duration_ns DESC")
        with self._lock:
            if by_part:
                rows = _distinct(self._conn.execute(sql, args), offset + limit)[offset:]
            else:
                rows = self._conn.execute(
                    sql + " LIMIT ? OFFSET ?", [*args, limit, offset]
                ).fetchall()
            return self._summaries(rows)

    def _rows_of(self, columns: str, trace_ids: Sequence[str]) -> Iterator[Any]:
        """``columns`` of the ``spans`` rows of ``trace_ids``, by the index on the trace id, in
        chunks of 500 ids (SQLite bounds the parameters of one statement)."""
        for first in range(0, len(trace_ids), 500):
            chunk = trace_ids[first : first + 500]
            yield from self._conn.execute(
                f"SELECT {columns} FROM spans WHERE trace_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )

    def _summaries(self, rows: Sequence[Sequence[Any]]) -> list[TraceSummary]:
        """Summaries for ``_LIST_COLUMNS`` rows: their span and error counts and services summed
        from their traces' ``spans`` rows (a page's few dozen, by the index on the trace id)."""
        if not rows:
            return []
        tally: dict[str, tuple[list[int], set[str]]] = {r[0]: ([0, 0], set()) for r in rows}
        for trace_id, service, count, errors in self._rows_of(
            "trace_id, service, count, errors", list(tally)
        ):
            counts, services = tally[trace_id]
            counts[0] += count
            counts[1] += errors
            services.add(service)
        found = []
        for trace_id, start, end, duration, root_name, root_service, cid in rows:
            (spans, errors), services = tally[trace_id]
            found.append(
                TraceSummary(
                    trace_id=trace_id,
                    start_ns=start,
                    end_ns=end,
                    duration_ns=duration,
                    spans=spans,
                    errors=errors,
                    root_name=root_name,
                    root_service=root_service,
                    services=tuple(sorted(services)),
                    correlation_id=cid,
                )
            )
        return found

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
            stored = self._conn.execute(
                "SELECT s.trace_id, s.rowid FROM "
                "(SELECT trace_id FROM traces WHERE start_ns >= ? "
                " ORDER BY start_ns DESC LIMIT ?) t "
                "JOIN spans s ON s.trace_id = t.trace_id",
                (start, sample),
            ).fetchall()
            # a trace's calls are read again only when it has rows that were not there the last
            # time: a dashboard asking every second reads only the traces new since
            rows_of: dict[str, set[int]] = {}
            for trace_id, rowid in stored:
                rows_of.setdefault(trace_id, set()).add(rowid)
            seen = self._calls_seen
            kept = {t: seen[t] for t, ids in rows_of.items() if t in seen and seen[t][0] == ids}
            stale = [t for t in rows_of if t not in kept]
            fresh: dict[str, list[tuple[int, str, str]]] = {}
            for trace_id, rowid, service, text in self._rows_of(
                "trace_id, rowid, service, spans", stale
            ):
                fresh.setdefault(trace_id, []).append((rowid, service, text))
            for trace_id, parts in fresh.items():
                kept[trace_id] = ({p[0] for p in parts}, _calls(parts))
            self._calls_seen = kept
        found: dict[tuple[str, str, bool], list[int]] = {}
        for _, calls in kept.values():
            for source, target, consumer, failed in calls:
                tally = found.setdefault((source, target, consumer), [0, 0])
                tally[0] += 1
                tally[1] += failed
        return [
            Edge(
                source=source,
                target=target,
                kind="async" if consumer else "sync",
                calls=calls,
                errors=errors,
            )
            for (source, target, consumer), (calls, errors) in sorted(found.items())
        ]

    def count(self) -> int:
        """How many traces are stored."""
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM traces").fetchone()
        return int(row[0])

    def services(self) -> list[str]:
        """Every service that has spans stored, sorted."""
        with self._lock:
            rows = self._conn.execute(_SERVICES).fetchall()
        return [str(r[0]) for r in rows]


_encode = json.JSONEncoder(separators=(",", ":"), default=str, check_circular=False).encode


def _public_chunks(value: object, _level: int) -> Sequence[str]:
    """``value`` as the stored JSON, through ``JSONEncoder.encode`` (``_chunks``'s fallback)."""
    return (_encode(value),)


def _made_once() -> Callable[[object, int], Sequence[str]] | None:
    """The C encoder that ``JSONEncoder.encode`` builds anew for every value, built once: for
    a trace's few spans, building it cost about a sixth of the writer's instructions per span.
    ``json.encoder.c_make_encoder`` is not documented, so it is used only when present and
    writing, for a probe of every kind of value a record holds, what ``_encode`` writes; None
    otherwise."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    probe = [
        (2**127 + 5, 7, None, "GET /é\"x\"", "server", 1, 2, "ok", None,
         {"n": 1, "f": 0.5, "b": True, "t": (1, "a"), "raw": b"x"},
         (("e", 3, {}),), ((4, 5),)),
        [], {}, float("inf"),
    ]  # fmt: skip
    try:
        encoder = make(
            None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
        )
        chunks: Callable[[object, int], Sequence[str]] = encoder
        if "".join(chunks(probe, 0)) != _encode(probe):
            return None
    except Exception:  # another signature: the public path
        return None
    return chunks


#: A trace's spans as the stored JSON, in chunks to join.
_chunks: Callable[[object, int], Sequence[str]] = _made_once() or _public_chunks


def dumps(value: object) -> str:
    """Compact JSON for a stored attributes, events or links column ("{}"/"[]" when empty)."""
    if not value:
        return "[]" if isinstance(value, list | tuple) else "{}"
    return _encode(value)


def _calls(parts: list[tuple[int, str, str]]) -> list[tuple[str, str, bool, bool]]:
    """The cross-service calls in one trace's rows (rowid, service, spans): source, target,
    whether by message (a consumer span), whether it failed."""
    owner: dict[int, str] = {}
    children: list[tuple[str, int, bool, bool]] = []
    for _, service, text in parts:
        for r in json.loads(text):
            owner[r[1]] = service
            if r[2] is not None:
                children.append((service, r[2], r[4] == "consumer", r[7] == "error"))
    calls = []
    for service, parent, consumer, failed in children:
        source = owner.get(parent)
        if source is not None and source != service:
            calls.append((source, service, consumer, failed))
    return calls


def _span(service: str, stored: list[Any]) -> SpanRecord:
    tid, sid, parent, name, kind, start, end, status, message, attributes, events, links = stored
    cid = attributes.get(CORRELATION_ATTRIBUTE) if attributes else None
    return SpanRecord(
        trace_id=f"{tid:032x}",
        span_id=f"{sid:016x}",
        parent_id=None if parent is None else f"{parent:016x}",
        name=name,
        service=service,
        kind=kind,
        start_ns=start,
        end_ns=end,
        status=status,
        status_message=message,
        correlation_id=None if cid is None else str(cid),
        attributes=attributes or {},
        events=[{"name": n, "at_ns": at, "attributes": a or {}} for n, at, a in events],
        links=[{"trace_id": f"{t:032x}", "span_id": f"{k:016x}"} for t, k in links],
    )


def _distinct(rows: Iterable[Sequence[Any]], wanted: int) -> list[Sequence[Any]]:
    """The first ``wanted`` rows of distinct traces (the first column), in the order read."""
    seen: set[str] = set()
    found: list[Sequence[Any]] = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            found.append(row)
            if len(found) == wanted:
                break
    return found
