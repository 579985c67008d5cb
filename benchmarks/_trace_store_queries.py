"""CPU per call of the trace store's list and lookup queries with 100,000 traces stored.

The store is filled through ``TraceStore.add`` with traces of three spans (a gateway's server
and client spans, and one of three services' server span), random trace ids, durations from 1
to 50 ms and one trace in 97 failed; each query then runs 30 times and the median CPU time
(``time.process_time``) is printed. Compare code before and after a change in the same
sitting: the figures move with the machine's load.

Usage: ``python benchmarks/_trace_store_queries.py [TRACES]`` (about half a minute).
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from interlink.tracing import SpanRecord, TraceStore


def fill(store: TraceStore, traces: int, now: int) -> list[str]:
    """Store ``traces`` traces, one a millisecond up to ``now``; returns their ids."""
    rnd = random.Random(7)
    ids = []
    batch: list[SpanRecord] = []
    for t in range(traces):
        start = now - (traces - t) * 1_000_000
        tid = f"{rnd.getrandbits(128):032x}"
        ids.append(tid)
        duration = rnd.randrange(1_000_000, 50_000_000)
        downstream = ("order", "payment", "stock")[t % 3]
        for s, (service, kind, parent) in enumerate(
            [("gateway", "server", None), ("gateway", "client", 1), (downstream, "server", 2)], 1
        ):
            batch.append(
                SpanRecord(
                    trace_id=tid,
                    span_id=f"{t * 4 + s:016x}",
                    parent_id=None if parent is None else f"{t * 4 + parent:016x}",
                    name="GET /orders/{id}",
                    service=service,
                    kind=kind,
                    start_ns=start + s * 1000,
                    end_ns=start + duration - s * 1000,
                    status="error" if t % 97 == 0 else "ok",
                    correlation_id=f"c{t}",
                    attributes={"http.request.method": "GET", "http.response.status_code": 200},
                )
            )
        if len(batch) >= 3000:
            store.add(batch)
            batch = []
    store.add(batch)
    return ids


def main(argv: list[str]) -> None:
    traces = int(argv[0]) if argv else 100_000
    with tempfile.TemporaryDirectory() as d:
        store = TraceStore.from_url(f"sqlite:///{d}/traces.db")
        now = time.time_ns()
        ids = fill(store, traces, now)
        since = (now - traces * 1_000_000 // 2) / 1e9
        queries: dict[str, Callable[[], object]] = {
            "newest page": store.traces,
            "slowest": lambda: store.traces(order="slowest"),
            "errors": lambda: store.traces(errors=True),
            "one service": lambda: store.traces(service="payment"),
            "one service, 21st page": lambda: store.traces(service="payment", offset=1000),
            "slowest of one service": lambda: store.traces(service="payment", order="slowest"),
            "errors of a service since": lambda: store.traces(
                service="order", errors=True, since=since
            ),
            "time range": lambda: store.traces(since=since, until=since + 10),
            "correlation id": lambda: store.traces(correlation_id="c4242"),
            "one trace": lambda: store.trace(ids[traces // 2]),
            "summary": lambda: store.summary(ids[traces // 3]),
            "services": store.services,
            "count": store.count,
        }
        print(f"{store.count():,} traces stored; CPU per call, median of 30")
        for name, query in queries.items():
            if not query():
                raise RuntimeError(f"{name}: nothing found")
            times = []
            for _ in range(30):
                started = time.process_time()
                query()
                times.append(time.process_time() - started)
            print(f"{name:28s} {statistics.median(times) * 1e3:7.2f} ms")
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
