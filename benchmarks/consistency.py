"""Claim: the outbox relay keeps up with a busy service, and durable sagas are cheap.

- outbox relay throughput (events/s): a backlog of events relayed to the broker, with the
  broker's confirmation, on SQLite and on PostgreSQL;
- outbox lag, commit -> broker confirmation, p50/p99, at a steady 1,000 events/s (one event
  per transaction): PostgreSQL woken by LISTEN/NOTIFY, PostgreSQL polling, SQLite polling.
  Target: p99 <= 50 ms on PostgreSQL with LISTEN/NOTIFY;
- sagas per second: three-step sagas with local steps, 1,000 of them started at once, until
  all are COMPLETED (every transition persisted), on SQLite and on PostgreSQL. Target: >= 1,000/s
  on PostgreSQL.

The broker is NATS JetStream when one answers on 127.0.0.1:4222 (file storage: durable), else
the embedded SQLite broker (WAL). The writer and the relay share one process and one event
loop, as a service running its own relay would.

Usage: ``python benchmarks/consistency.py [--quick] [--sagas-only] [--markdown PATH] [--update-docs]
[--strict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # a script folder, not a package
import _report as rep

from interlink.messaging import Broker
from interlink.messaging.envelope import OutgoingMessage
from interlink.outbox import Outbox, OutboxRelay
from interlink.saga import Orchestrator, SagaDefinition, SagaStore, Step, StepContext

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = "nats://127.0.0.1:4222"
LAG_TARGET = 0.050
WRITERS = 16  # concurrent writer connections on PostgreSQL
SAGA_TARGET = 1000.0
HEADERS = ("benchmark", "store / mode", "measured", "detail", "target", "")


class Timed:
    """Wraps a broker backend: records when each message id was confirmed."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.confirmed: dict[str, float] = {}

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        await self.backend.publish(topic, message)
        self.confirmed[message.message_id] = time.monotonic()

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        await self.backend.publish_batch(topic, items)
        now = time.monotonic()
        for item in items:
            self.confirmed[item.message_id] = now


def nats_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 4222), 0.5):
        return True
    return False


async def drop_nats_stream(topic: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream("interlink:" + topic.replace(".", ":"))
    await nc.close()


async def drop_pg_outbox(table: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    await conn.execute(
        f"DROP TABLE IF EXISTS {table}, {table}_parts; DROP FUNCTION IF EXISTS {table}_notify()"
    )
    await conn.close()


class Db:
    """One outbox on SQLite or PostgreSQL: write events one transaction at a time."""

    def __init__(self, kind: str, tmp: Path, table: str) -> None:
        self.kind, self.table, self.outbox = kind, table, Outbox(table)
        self.url = f"sqlite:///{tmp / 'app.db'}" if kind == "sqlite" else PG_URL
        self.conn: Any = None

    async def open(self) -> None:
        if self.kind == "sqlite":
            self.conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.outbox.create_tables(self.conn)
        else:
            import asyncpg

            # Several connections: one PostgreSQL commit waits for its WAL flush, so a
            # service reaches 1,000 transactions/s only with requests in parallel.
            self.conn = await asyncpg.create_pool(PG_URL, min_size=WRITERS, max_size=WRITERS)
            async with self.conn.acquire() as conn:
                await self.outbox.acreate_tables(conn)

    async def write(self, topic: str, payload: bytes, key: str) -> str:
        if self.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            mid = self.outbox.add(self.conn, topic, payload, key=key)
            self.conn.execute("COMMIT")
            return mid
        async with self.conn.acquire() as conn, conn.transaction():
            return await self.outbox.aadd(conn, topic, payload, key=key)

    async def write_many(self, topic: str, count: int) -> None:
        payload = b"x" * 256
        if self.kind == "sqlite":
            with self.conn:
                self.conn.execute("BEGIN")
                for i in range(count):
                    self.outbox.add(self.conn, topic, payload, key=f"k{i % 64}")
            return
        async with self.conn.acquire() as conn, conn.transaction():
            for i in range(count):
                await self.outbox.aadd(conn, topic, payload, key=f"k{i % 64}")

    async def close(self) -> None:
        if self.kind == "sqlite":
            self.conn.close()
        else:
            await self.conn.close()
            await drop_pg_outbox(self.table)


async def with_relay(
    broker_url: str,
    db: Db,
    relay_options: dict[str, Any],
    body: Callable[[Timed, str], Awaitable[Any]],
) -> Any:
    topic = f"bench.outbox.t{uuid.uuid4().hex[:8]}"
    broker = Broker.from_url(broker_url)
    timed = Timed(await broker.connect())
    relay = OutboxRelay(db.url, timed, table=db.table, **relay_options)
    await relay.open()
    task = asyncio.create_task(relay.run())
    try:
        return await body(timed, topic)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await broker.stop()
        if broker_url.startswith("nats"):
            await drop_nats_stream(topic)


async def throughput(broker_url: str, kind: str, count: int, tmp: Path) -> float:
    """Events/s relaying a backlog of ``count`` events."""
    db = Db(kind, tmp, f"bench_outbox_{uuid.uuid4().hex[:8]}")
    await db.open()
    try:

        async def body(timed: Timed, topic: str) -> float:
            await db.write_many(topic, count)
            started = time.monotonic()
            while True:  # polled: the count is the only signal there is
                if len(timed.confirmed) >= count:
                    break
                await asyncio.sleep(0.005)
            return count / (max(timed.confirmed.values()) - started)

        # Start the relay only once the backlog is there: pause it with a long poll.
        return float(
            await with_relay(broker_url, db, {"batch_size": 500, "poll_interval": 0.01}, body)
        )
    finally:
        await db.close()


async def steady_lag(
    broker_url: str,
    kind: str,
    *,
    rate: float,
    seconds: float,
    options: dict[str, Any],
    tmp: Path,
) -> tuple[float, float, float]:
    """(p50, p99, achieved rate) of commit -> confirmation at ``rate`` events/s."""
    db = Db(kind, tmp, f"bench_outbox_{uuid.uuid4().hex[:8]}")
    await db.open()
    try:

        async def body(timed: Timed, topic: str) -> tuple[float, float, float]:
            committed: dict[str, float] = {}
            await asyncio.sleep(0.3)
            start = time.monotonic()
            count = int(rate * seconds)
            writers = WRITERS if kind == "postgres" else 1

            async def writer(first: int) -> None:
                for i in range(first, count, writers):
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    mid = await db.write(topic, b"x" * 256, f"k{i % 64}")
                    committed[mid] = time.monotonic()

            await asyncio.gather(*(writer(w) for w in range(writers)))
            achieved = count / (time.monotonic() - start)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if len(timed.confirmed) >= count:
                    break
                await asyncio.sleep(0.01)
            lags = sorted(
                timed.confirmed[m] - t for m, t in committed.items() if m in timed.confirmed
            )
            if len(lags) < count:
                raise RuntimeError(f"only {len(lags)} of {count} events were confirmed")
            return statistics.median(lags), lags[int(len(lags) * 0.99) - 1], achieved

        return tuple(await with_relay(broker_url, db, options, body))  # type: ignore[return-value]
    finally:
        await db.close()


async def sagas_per_second(url: str, count: int) -> float:
    """Three local steps each; ``count`` started at once; until all are COMPLETED."""

    async def step(ctx: StepContext) -> dict[str, str]:
        return {"done": ctx.step}

    definition = SagaDefinition(
        "bench", [Step("reserve", step, step), Step("charge", step, step), Step("confirm", step)]
    )
    table = f"bench_sagas_{uuid.uuid4().hex[:8]}"
    store = SagaStore.from_url(url, table=table)
    await store.open()
    try:
        async with Orchestrator(
            store, [definition], max_concurrent=200, poll_interval=0.05
        ) as orch:
            started = time.monotonic()
            ids = await asyncio.gather(*(orch.start("bench", {"n": i}) for i in range(count)))
            while True:
                active = await store.list(statuses=("RUNNING", "COMPENSATING"), limit=1)
                if not active:
                    break
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            done = await store.list(statuses=("COMPLETED",), limit=count + 1)
            if len(done) != len(ids):
                raise RuntimeError(f"{len(done)} of {count} sagas completed")
            return count / elapsed
    finally:
        await store.drop()
        await store.close()


async def measure(quick: bool, sagas_only: bool = False) -> tuple[list[h.Row], bool]:
    rows: list[h.Row] = []
    failed = False
    broker_url = NATS_URL if nats_up() else None
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if broker_url is None:
            broker_url = f"sqlite:///{tmp / 'broker.db'}"
        broker_name = "NATS JetStream (file)" if broker_url.startswith("nats") else "SQLite broker"
        if not sagas_only:
            backlog = 5_000 if quick else 20_000
            for kind in ("sqlite", "postgres"):
                sub = tmp / f"tp-{kind}"
                sub.mkdir()
                rate = await throughput(broker_url, kind, backlog, sub)
                rows.append(
                    h.Row(
                        "outbox relay throughput",
                        f"{kind} -> {broker_name}",
                        f"{rate:,.0f} events/s",
                        f"backlog of {backlog:,}, batches of 500",
                        "",
                        "",
                    )
                )
            seconds = 3.0 if quick else 8.0
            modes = [
                ("postgres", "LISTEN/NOTIFY", {"poll_interval": 1.0, "listen": True}, True),
                (
                    "postgres",
                    "polling every 50 ms",
                    {"poll_interval": 0.05, "listen": False},
                    False,
                ),
                ("sqlite", "polling every 10 ms", {"poll_interval": 0.01}, False),
                ("sqlite", "polling every 100 ms (default)", {}, False),
            ]
            for kind, mode, options, targeted in modes:
                sub = tmp / f"lag-{uuid.uuid4().hex[:6]}"
                sub.mkdir()
                p50, p99, achieved = await steady_lag(
                    broker_url, kind, rate=1000.0, seconds=seconds, options=options, tmp=sub
                )
                verdict = ""
                if targeted:
                    verdict = "pass" if p99 <= LAG_TARGET else "FAIL"
                    failed |= verdict == "FAIL"
                rows.append(
                    h.Row(
                        "outbox lag at 1,000 events/s, commit -> confirmed",
                        f"{kind}, {mode}",
                        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
                        f"{achieved:,.0f} events/s for {seconds:g} s",
                        "p99 <= 50 ms" if targeted else "",
                        verdict,
                    )
                )
        count = 500 if quick else 1000
        for kind, url in (("sqlite", f"sqlite:///{tmp / 'sagas.db'}"), ("postgres", PG_URL)):
            cpu_started = time.process_time()
            rate = await sagas_per_second(url, count)
            cpu = (time.process_time() - cpu_started) / count
            verdict = ""
            if kind == "postgres":
                verdict = "pass" if rate >= SAGA_TARGET else "FAIL"
                failed |= verdict == "FAIL"
            rows.append(
                h.Row(
                    "three-step sagas, local steps",
                    kind,
                    f"{rate:,.0f} sagas/s",
                    f"{count:,} started at once, 200 at a time, 4 writes each; "
                    f"orchestrator CPU {cpu * 1000:.2f} ms/saga",
                    ">= 1,000/s" if kind == "postgres" else "",
                    verdict,
                )
            )
    return rows, failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--sagas-only", action="store_true", help="only the sagas-per-second rows")
    rep.add_output_options(
        parser, markdown="also write the table to this file", docs="rewrite docs/performance.md"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows, failed = asyncio.run(measure(args.quick, args.sagas_only))
    took = time.monotonic() - started
    h.print_table("consistency: outbox relay and sagas", rows, HEADERS)
    text = rep.results_text(f"took {took:.0f} s.", h.to_markdown(rows, HEADERS))
    return rep.publish("consistency", text, args, failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
