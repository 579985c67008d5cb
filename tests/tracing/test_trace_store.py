"""The embedded trace store: what it keeps, the questions it answers, and its retention."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from interlink.tracing import SpanRecord, TraceStore
from interlink.tracing.store import _SERVICES, _made_once, _public_chunks

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


def test_exports_of_one_trace_add_up(store: TraceStore) -> None:
    """Several exports of one trace make one list row: counts and services summed from every
    export, extremes widened, the root taken when it arrives; an export inside what is known
    changes nothing but the counts."""
    store.add([span(3, 3, 2, service="menu", start=0.2, ms=10)])
    store.add([span(3, 2, 1, service="order", start=0.1, ms=50, status="error")])
    store.add([span(3, 1, None, service="gateway", start=0.0, ms=300, name="GET /", cid="c3")])
    store.add([span(3, 4, 2, service="menu", start=0.15, ms=5)])
    (row,) = store.traces()
    assert (row.root_name, row.root_service, row.correlation_id) == ("GET /", "gateway", "c3")
    assert (row.spans, row.errors, row.services) == (4, 1, ("gateway", "menu", "order"))
    assert row.duration_ms == pytest.approx(300)
    assert store.summary(row.trace_id) == row
    assert [r.trace_id for r in store.traces(errors=True)] == [row.trace_id]
    # the service had two exports of the trace: it is listed once, in every order
    for order in ("recent", "slowest"):
        assert [r.trace_id for r in store.traces(service="menu", order=order)] == [row.trace_id]


def test_a_service_page_counts_each_trace_once(store: TraceStore) -> None:
    """A page of one service's traces holds distinct traces, newest first, and the next page
    goes on where it stopped, however many exports of a trace the service made."""
    for t in range(1, 8):
        store.add([span(t, 1, None, service="menu", start=t)])
        store.add([span(t, 2, 1, service="menu", start=t + 0.5)])
    pages = [store.traces(service="menu", limit=3, offset=o) for o in (0, 3, 6)]
    assert [[int(r.trace_id, 16) for r in p] for p in pages] == [[7, 6, 5], [4, 3, 2], [1]]
    assert store.traces(service="menu", limit=3, offset=7) == []
    # a time range picks the traces with a span of the service started in it
    later = store.traces(service="menu", since=1_700_000_004.2)
    assert [int(r.trace_id, 16) for r in later] == [7, 6, 5, 4]


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
        "SELECT * FROM traces WHERE failed > 0 ORDER BY start_ns DESC LIMIT 50",
        "SELECT t.* FROM spans s JOIN traces t ON t.trace_id = s.trace_id "
        "WHERE s.service = 'x' ORDER BY s.start_ns DESC LIMIT 50",
        "SELECT trace_id, service, count, errors FROM spans WHERE trace_id IN ('x', 'y')",
        "SELECT * FROM traces t WHERE EXISTS (SELECT 1 FROM spans s WHERE "
        "s.trace_id = t.trace_id AND +s.service = 'x') ORDER BY t.duration_ns DESC LIMIT 50",
        _SERVICES,
    ]
    for sql in queries:
        plan = [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        for step in plan:
            assert step not in ("SCAN traces", "SCAN spans", "SCAN s", "SCAN t"), (sql, plan)
            assert "TEMP B-TREE" not in step, (sql, plan)
    # the service list steps from service to service in the index, not through every entry
    plan = [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {_SERVICES}")]
    assert not [step for step in plan if step.startswith("SCAN spans")], plan
    # one trace's spans are found by key (sorting a trace's few rows after that is cheap)
    plan = [
        str(r[-1])
        for r in conn.execute("EXPLAIN QUERY PLAN SELECT * FROM spans WHERE trace_id = 'x'")
    ]
    assert plan == ["SEARCH spans USING INDEX spans_by_trace (trace_id=?)"]
    # the slowest of one service: each candidate's rows by key, not the service's every row
    plan = [str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {queries[-2]}")]
    assert "SEARCH s USING INDEX spans_by_trace (trace_id=?)" in plan, plan


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


def test_a_file_of_an_earlier_layout_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file written by an earlier layout is laid out anew, with a warning: telemetry is not
    worth a migration, but it must not stop the store from opening."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, name TEXT);"
        "INSERT INTO spans VALUES ('00000000000000000000000000000001', '0000000000000001', 'x');"
        "CREATE TABLE traces (trace_id TEXT PRIMARY KEY, start_ns INTEGER);"
        "CREATE TABLE trace_services (trace_id TEXT, service TEXT);"
        "PRAGMA user_version = 2;"
    )
    old.close()
    with caplog.at_level("WARNING", logger="interlink.tracing"):
        store = TraceStore.from_url(f"sqlite:///{path}")
    assert "earlier layout" in caplog.text
    assert store.count() == 0
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "trace_services" not in tables  # layout 2's table went with its traces
    store.add([span(2, 1, None)])
    assert [s.span_id for s in store.trace(f"{2:032x}")] == [f"{1:016x}"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="interlink.tracing"):
        again = TraceStore.from_url(f"sqlite:///{path}")
    assert caplog.text == ""  # laid out once: the next opening keeps the traces
    assert again.count() == 1


def test_records_are_stored_as_the_recorder_hands_them(store: TraceStore) -> None:
    """The recorder's plain values come back as the same spans: ids in hex, the correlation id
    from the attributes, events and links as mappings."""
    start = 1_700_000_000 * SECOND
    link = (0xAB, 0xCD)
    records = [
        (5, 1, None, "GET /a", "server", start, start + 9, "ok", None,
         {"interlink.correlation_id": "c5", "n": 1}, (("e", start + 1, {"x": "y"}),), ()),
        (5, 2, 1, "GET", "client", start + 1, start + 5, "error", "boom", {}, (), (link,)),
    ]  # fmt: skip
    assert store.add_records(records, "edge") == 2
    root, child = store.trace(f"{5:032x}")
    assert (root.span_id, root.parent_id, root.correlation_id) == (f"{1:016x}", None, "c5")
    assert root.events == [{"name": "e", "at_ns": start + 1, "attributes": {"x": "y"}}]
    assert (child.parent_id, child.status, child.status_message) == (f"{1:016x}", "error", "boom")
    assert child.links == [{"trace_id": f"{0xAB:032x}", "span_id": f"{0xCD:016x}"}]
    (row,) = store.traces()
    assert (row.spans, row.errors, row.root_name, row.correlation_id) == (2, 1, "GET /a", "c5")


def test_attribute_values_read_back_as_json_has_them(store: TraceStore) -> None:
    """Sequences come back as lists and values of other types (bytes, an object) as their
    text: the dashboard serves them as JSON."""

    class Odd:
        def __str__(self) -> str:
            return "odd"

    attributes = {"n": 1, "f": 0.5, "b": True, "s": "x", "seq": (1, "a"), "raw": b"hi"}
    start = 1_700_000_000 * SECOND
    records = [
        (6, 1, None, "plain", "server", start, start + 9, "ok", None, dict(attributes),
         (("e", start, {"seq": ("p", Odd())}),), ()),
        (6, 2, 1, "odd", "internal", start + 1, start + 5, "ok", None,
         {**attributes, "odd": Odd()}, (), ()),
    ]  # fmt: skip
    store.add_records(records, "edge")
    first, second = store.trace(f"{6:032x}")
    read = {"n": 1, "f": 0.5, "b": True, "s": "x", "seq": [1, "a"], "raw": "b'hi'"}
    assert first.attributes == read
    assert first.events[0]["attributes"] == {"seq": ["p", "odd"]}
    assert second.attributes == {**read, "odd": "odd"}


@pytest.mark.parametrize(
    "value",
    [
        [(2**127 + 1, 2, None, "naïve \"q\" \\ \u2028", "server", 1, 2, "ok", None,
          {"n": -1, "f": 1e-7, "b": False, "seq": (1.5, "x"), "raw": b"\xff", "z": None},
          (("e", 3, {"k": "v"}),), ((4, 5),))],
        [], {}, "text", 2**70, float("nan"), {"nested": [{"a": (1, [2, {"b": set()}])}]},
    ],
)  # fmt: skip
def test_the_encoder_made_once_writes_what_the_public_encoder_writes(value: object) -> None:
    """The stored JSON is the same through the C encoder built once as through its public
    fallback, ``JSONEncoder.encode``, for every kind of value a record may hold."""
    expected = json.dumps(value, separators=(",", ":"), default=str)
    assert "".join(_public_chunks(value, 0)) == expected
    made = _made_once()
    if made is not None:
        assert "".join(made(value, 0)) == expected


def test_edges_see_spans_that_arrive_later(store: TraceStore) -> None:
    """A trace's calls are remembered between two asks, and read again once it has new rows:
    a span written by another service later shows as its call."""
    store.add([span(1, 1, None, service="gateway", start=1e6), span(2, 1, None, service="a")])
    store.add([span(1, 2, 1, service="order", start=1e6)])
    assert {(e.source, e.target): e.calls for e in store.edges(since=0)} == {
        ("gateway", "order"): 1
    }
    store.add([span(1, 3, 2, service="payment", start=1e6), span(2, 2, 1, service="b")])
    assert {(e.source, e.target): e.calls for e in store.edges(since=0)} == {
        ("a", "b"): 1,
        ("gateway", "order"): 1,
        ("order", "payment"): 1,
    }
