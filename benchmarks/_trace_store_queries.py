"""CPU per call of the trace store's list and lookup queries with 100,000 traces stored.

The store is filled as ``observability.py`` fills it for the dashboard's first paint (traces of
three spans, a gateway's and the order service's, one in 97 failed); each query then runs 30
times and the median CPU time (``time.process_time``) is printed. Compare code before and after
a change in the same sitting: the figures move with the machine's load.

Usage: ``python benchmarks/_trace_store_queries.py [TRACES]`` (about half a minute).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from observability import stored_traces

from interlink.tracing import TraceStore


def main(argv: list[str]) -> None:
    traces = int(argv[0]) if argv else 100_000
    with tempfile.TemporaryDirectory() as d:
        store = TraceStore.from_url(f"sqlite:///{d}/traces.db")
        ids = stored_traces(store, traces)
        since = time.time() - traces / 1000 / 2
        queries: dict[str, Callable[[], object]] = {
            "newest page": store.traces,
            "slowest": lambda: store.traces(order="slowest"),
            "errors": lambda: store.traces(errors=True),
            "one service": lambda: store.traces(service="order"),
            "one service, 21st page": lambda: store.traces(service="order", offset=1000),
            "slowest of one service": lambda: store.traces(service="order", order="slowest"),
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
