"""CPU instructions the trace writer spends per stored span, counted by valgrind.

The writer process of ``interlink.tracing`` (``recorder._serve``) turns each batch a service
sends into rows and stores them; on a busy two-core machine every instruction it spends shows in
the services' latency. This driver feeds it realistic batches (the spans of a two-hop HTTP call,
written by its two services, and of a publish -> consume) through the same path: ``marshal``
bytes in, ``_write_records`` into a file store. It runs twice under ``valgrind --tool=callgrind``
(``SMALL`` and ``LARGE`` traces of each kind), and the difference divided by the extra spans is
the figure: start-up, imports and the schema cancel out.

Usage: ``python benchmarks/_trace_store_instructions.py`` (needs ``valgrind``; about a minute).
``... run DIR`` is the measured workload alone.
"""

from __future__ import annotations

import marshal
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SMALL = 1_000
LARGE = 5_000
#: traces per batch a service sends (about half a second of a busy service's spans)
BATCH = 256
#: spans per unit: A's server and client spans, B's server span, a producer and a consumer
SPANS_PER_UNIT = 5


def _batches(n: int) -> list[tuple[str, bytes]]:
    """(service, marshal bytes) per batch, as the services would send them."""
    now = time.time_ns()
    out: list[tuple[str, bytes]] = []
    for first in range(0, n, BATCH):
        a: list[Any] = []
        b: list[Any] = []
        m: list[Any] = []
        for i in range(first, min(n, first + BATCH)):
            start = now + i * 1_000_000
            cid = f"{i:032x}"
            http, msg = (i + 1) << 64 | 7, (i + 1) << 64 | 9
            a += [
                (http, 0xA1 + i, None, "GET /hop", "server", start, start + 900_000, "unset",
                 None, {"http.request.method": "GET", "url.path": "/hop",
                        "interlink.correlation_id": cid, "http.route": "/hop",
                        "http.response.status_code": 200}, (), ()),
                (http, 0xA2 + i, 0xA1 + i, "GET", "client", start + 100_000, start + 800_000,
                 "unset", None, {"http.request.method": "GET",
                                 "url.full": "http://127.0.0.1:40123/hop",
                                 "interlink.correlation_id": cid,
                                 "http.response.status_code": 200}, (), ()),
            ]  # fmt: skip
            b.append(
                (http, 0xB1 + i, 0xA2 + i, "GET /hop", "server", start + 200_000,
                 start + 700_000, "unset", None,
                 {"http.request.method": "GET", "url.path": "/hop",
                  "interlink.correlation_id": cid, "http.route": "/hop",
                  "http.response.status_code": 200}, (), ())
            )  # fmt: skip
            m += [
                (msg, 0xC1 + i, None, "bench.trace publish", "producer", start, start + 50_000,
                 "unset", None, {"messaging.destination.name": "bench.trace",
                                 "messaging.operation.type": "send",
                                 "messaging.system": "interlink"}, (), ()),
                (msg, 0xC2 + i, 0xC1 + i, "bench.trace process", "consumer", start + 300_000,
                 start + 400_000, "unset", None,
                 {"messaging.destination.name": "bench.trace",
                  "messaging.operation.type": "process", "messaging.system": "interlink",
                  "messaging.consumer.group.name": "bench"}, (), ()),
            ]  # fmt: skip
        out += [("a", marshal.dumps(a)), ("b", marshal.dumps(b)), ("bench", marshal.dumps(m))]
    return out


def run(directory: str) -> None:
    """The writer's work for the batches in ``directory``/batches (built beforehand, outside the
    count, as the services build them)."""
    from interlink.tracing.recorder import _write_records
    from interlink.tracing.store import TraceStore

    batches = marshal.loads(Path(directory, "batches").read_bytes())
    store = TraceStore(f"{directory}/traces.db")
    for exports, (service, payload) in enumerate(batches):
        records = marshal.loads(payload)
        _write_records(
            store, records, service, exports=exports, every=200, max_age=None, max_traces=None
        )
    store.close()


def _instructions(n: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "batches").write_bytes(marshal.dumps(_batches(n)))
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out",
             sys.executable, __file__, "run", d],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(out.stderr)
    return int(found.group(1))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "run":
        run(argv[1])
        return
    small, large = _instructions(SMALL), _instructions(LARGE)
    per_span = (large - small) / ((LARGE - SMALL) * SPANS_PER_UNIT)
    print(f"trace writer: {per_span:,.0f} instructions per stored span")


if __name__ == "__main__":
    main(sys.argv[1:])
