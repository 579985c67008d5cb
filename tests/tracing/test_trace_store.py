"""The embedded trace store: what it keeps, the questions it answers, and its retention."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from interlink.tracing import SpanRecord, TraceStore

SECOND = 1_000_000_000


def span(
    trace: int,
    span_id: int,
    parent: int | None,
    *,
    service: str = "order",
    start: float = 0.0,
    ms: float = 1.0,
    status: str = "ok",
    cid: str | None = None,
    name: str | None = None,
) -> SpanRecord:
    start_ns = int(1_700_000_000 * SECOND + start * SECOND)
    return SpanRecord(
        trace_id=f"{trace:032x}",
        span_id=f"{span_id:016x}",
        parent_id=None if parent is None else f"{parent:016x}",
        name=name or f"span-{span_id}",
        service=service,
        kind="server",
        start_ns=start_ns,
        end_ns=start_ns + int(ms * 1e6),
        status=status,
        correlation_id=cid,
        attributes={"k": 1},
        events=[{"name": "e", "at_ns": start_ns, "attributes": {}}],
    )


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore.from_url(f"sqlite:///{tmp_path}/traces.db")


def test_a_trace_comes_back_whole_in_start_order(store: TraceStore) -> None:
    """Spans written in any order and in several batches read back as one waterfall."""
    store.add([span(1, 3, 2, service="menu", start=0.2), span(1, 1, None, start=0.0, ms=500)])
    store.add([span(1, 2, 1, service="order", start=0.1)])
    got = store.trace(f"{1:032x}")
    assert [s.span_id for s in got] == [f"{i:016x}" for i in (1, 2, 3)]
    assert got[0].attributes == {"k": 1}
    assert got[0].events[0]["name"] == "e"


def test_the_summary_names_the_root_and_counts_errors(store: TraceStore) -> None:
    """A trace's row: the root's name and service, every service, its span, its errors."""
    store.add(
        [
            span(7, 2, 1, service="payment", start=0.1, ms=50, status="error"),
            span(7, 1, None, service="gateway", start=0.0, ms=300, name="POST /orders", cid="c7"),
        ]
    )
    (row,) = store.traces()
    assert (row.root_name, row.root_service) == ("POST /orders", "gateway")
    assert row.services == ("gateway", "payment")
    assert (row.spans, row.errors, row.correlation_id) == (2, 1, "c7")
    assert row.duration_ms == pytest.approx(300)


def test_filters_and_orders(store: TraceStore) -> None:
    """By service (any span of it), correlation id, errors, time range; newest or slowest."""
    for t in range(1, 11):
        store.add(
            [
                span(t, 1, None, start=t, ms=t * 10, cid=f"c{t}"),
                span(t, 2, 1, service="menu" if t % 2 else "pricing", start=t + 0.001),
            ]
        )
    store.add([span(99, 1, None, start=50, status="error")])
    base = 1_700_000_000
    assert [r.trace_id for r in store.traces(limit=2)] == [f"{99:032x}", f"{10:032x}"]
    assert [r.duration_ms for r in store.traces(order="slowest", limit=2)] == [100, 90]
    assert {int(r.trace_id, 16) for r in store.traces(service="menu")} == {1, 3, 5, 7, 9}
    assert [int(r.trace_id, 16) for r in store.traces(correlation_id="c4")] == [4]
    assert [int(r.trace_id, 16) for r in store.traces(errors=True)] == [99]
    window = store.traces(since=base + 3, until=base + 6)
    assert sorted(int(r.trace_id, 16) for r in window) == [3, 4, 5]
    assert [int(r.trace_id, 16) for r in store.traces(limit=3, offset=3)] == [8, 7, 6]
    assert store.services() == ["menu", "order", "pricing"]
    assert store.count() == 11


def test_list_queries_use_indexes(store: TraceStore) -> None:
    """Every list query reads through an index, never a full scan or a temporary sort: the
    cost of a page does not grow with the number of traces stored."""
    conn = sqlite3.connect(store.path)
    queries = [
        "SELECT * FROM traces ORDER BY start_ns DESC LIMIT 50",
        "SELECT * FROM traces ORDER BY duration_ns DESC LIMIT 50",
        "SELECT * FROM traces WHERE correlation_id = 'x'",
        "SELECT * FROM traces WHERE errors > 0 ORDER BY start_ns DESC LIMIT 50",
        "SELECT t.* FROM trace_services ts JOIN traces t ON t.trace_id = ts.trace_id "
        "WHERE ts.service = 'x' ORDER BY ts.start_ns DESC LIMIT 50",
    ]
    for sql in queries:
        plan = [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for step in plan:
            assert step not in ("SCAN traces", "SCAN spans", "SCAN trace_services"), (sql, plan)
            assert "TEMP B-TREE" not in step, (sql, plan)
    # one trace's spans are found by key (sorting a trace's few rows after that is cheap)
    plan = [
        str(r[-1])
        for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM spans WHERE trace_id = 'x'")
    ]
    assert plan == ["SEARCH spans USING INDEX spans_by_trace (trace_id=?)"]


def test_many_traces_stay_quick_to_list(store: TraceStore) -> None:
    """20,000 traces stored: a page of the newest, the slowest, or one service's is at hand."""
    batch = []
    for t in range(20_000):
        batch += [span(t + 1, 1, None, start=t), span(t + 1, 2, 1, service=f"s{t % 7}")]
        if len(batch) >= 4_000:
            store.add(batch)
            batch = []
    store.add(batch)
    assert store.count() == 20_000
    assert len(store.traces(limit=50)) == 50
    assert len(store.traces(order="slowest", limit=50)) == 50
    assert len(store.traces(service="s3", limit=50)) == 50


def test_retention_by_age_and_count(store: TraceStore) -> None:
    """Old traces go first; a count limit keeps the newest."""
    for t in range(1, 6):
        store.add([span(t, 1, None, start=t * 100, service="a"), span(t, 2, 1, start=t * 100)])
    now = 1_700_000_000 + 500
    assert store.prune(max_age=250, now=now) == 2  # starts at +100 and +200 are older
    assert sorted(int(r.trace_id, 16) for r in store.traces()) == [3, 4, 5]
    assert store.prune(max_traces=1) == 2
    assert [int(r.trace_id, 16) for r in store.traces()] == [5]
    assert store.trace(f"{3:032x}") == []
    assert store.services() == ["a", "order"]
    assert store.prune(max_traces=10) == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db", "sqlite:///"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?busy_timeout=soon", "'busy_timeout' must be a number"),
        ("sqlite:///x.db?busy_timeout=-1", "'busy_timeout' must be >= 0"),
    ],
)
def test_bad_urls_name_what_is_wrong(url: str, message: str) -> None:
    """A URL the store cannot open is refused at once, naming the part."""
    with pytest.raises(ValueError, match=message):
        TraceStore.from_url(url)


def _write(path: str, first: int) -> None:
    store = TraceStore.from_url(f"sqlite:///{path}")
    for t in range(first, first + 200):
        store.add([span(t, 1, None, start=t), span(t, 2, 1, service="w", start=t)])


def test_two_processes_write_one_file(tmp_path: Path) -> None:
    """The services of a system share one store file: concurrent writers lose nothing."""
    path = str(tmp_path / "shared.db")
    TraceStore.from_url(f"sqlite:///{path}")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(path, first)) for first in (1, 10_001)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = TraceStore.from_url(f"sqlite:///{path}")
    assert store.count() == 400
    assert all(r.spans == 2 for r in store.traces(limit=400))


def test_edges_say_who_called_whom_and_how(store: TraceStore) -> None:
    """Server under client across services: sync; consumer under anything: async."""

    def at(trace: int, span_id: int, parent: int | None, service: str, kind: str) -> SpanRecord:
        base = span(trace, span_id, parent, service=service, start=1e6)
        return SpanRecord(**{**{f: getattr(base, f) for f in base.__slots__}, "kind": kind})

    for t in (1, 2):
        store.add(
            [
                at(t, 1, None, "gateway", "server"),
                at(t, 2, 1, "gateway", "client"),
                at(t, 3, 2, "order", "server"),
                at(t, 4, 3, "order", "producer"),
                at(t, 5, 4, "payment", "consumer"),
            ]
        )
    edges = {(e.source, e.target, e.kind): e.calls for e in store.edges(since=0)}
    assert edges == {("gateway", "order", "sync"): 2, ("order", "payment", "async"): 2}
    assert store.edges(since=2e9) == []
