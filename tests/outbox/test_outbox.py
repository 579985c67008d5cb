"""The outbox writer on every driver, and the relay's publishing rules."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from interlink import Retry
from interlink.context import use_correlation_id
from interlink.messaging.envelope import FIELDS, Envelope, OutgoingMessage, read
from interlink.outbox import Outbox, OutboxRelay
from interlink.outbox.stores import partition_of

T = TypeVar("T")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FAST = Retry(retries=1000, backoff=0.001, max_backoff=0.005, jitter="none")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


class Recording:
    """A backend-like publisher that records what it was given and fails on demand."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Envelope]] = []
        self.fail = 0

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("broker down")
        env = read(FIELDS, message.data, message.headers, fallback_id="")
        assert env.id == message.message_id
        self.sent.append((topic, env))

    def ids(self) -> list[str]:
        return [env.id for _, env in self.sent]


class Placed(BaseModel):
    order_id: str
    total: int


@pytest.fixture
def table() -> Iterator[str]:
    """A unique outbox table name, dropped from PostgreSQL afterwards."""
    name = f"outbox_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_parts")
        conn.execute(f"DROP FUNCTION IF EXISTS {name}_notify()")


def sqlite_db(tmp_path: Path, outbox: Outbox) -> tuple[sqlite3.Connection, str]:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # as a service would run it; no fsync per commit
    conn.execute("PRAGMA synchronous=NORMAL")
    outbox.create_tables(conn)
    conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
    conn.commit()
    return conn, f"sqlite:///{path}"


async def drain(relay: OutboxRelay) -> int:
    total = 0
    while n := await relay.relay_once():
        total += n
    return total


# -- writing ------------------------------------------------------------------------------------


def test_committed_event_is_published_as_written(tmp_path: Path, table: str) -> None:
    """The envelope carries the id add() returned, the type, key, headers and correlation id."""
    outbox = Outbox(table)
    conn, url = sqlite_db(tmp_path, outbox)
    with use_correlation_id("req-1"), conn:
        conn.execute("INSERT INTO orders VALUES ('o1')")
        mid = outbox.add(
            conn, "orders.placed", Placed(order_id="o1", total=3), key="o1", headers={"a": "b"}
        )
    sink = Recording()

    async def main() -> None:
        async with OutboxRelay(url, sink, table=table) as relay:
            assert await relay.relay_once() == 1

    run(main())
    [(topic, env)] = sink.sent
    assert topic == "orders.placed"
    assert (env.id, env.type, env.key, env.correlation_id) == (mid, "Placed", "o1", "req-1")
    assert env.headers == {"a": "b"}
    assert Placed.model_validate_json(env.payload) == Placed(order_id="o1", total=3)


def test_rolled_back_event_is_never_published_sqlite(tmp_path: Path, table: str) -> None:
    """State change rolled back: its event is gone with it."""
    outbox = Outbox(table)
    conn, url = sqlite_db(tmp_path, outbox)

    def handler_that_fails() -> None:
        with conn:
            conn.execute("INSERT INTO orders VALUES ('o1')")
            outbox.add(conn, "orders.placed", b"lost")
            raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        handler_that_fails()
    with conn:
        kept = outbox.add(conn, "orders.placed", b"kept")
    sink = Recording()

    async def main() -> None:
        async with OutboxRelay(url, sink, table=table) as relay:
            await drain(relay)

    run(main())
    assert sink.ids() == [kept]


def test_asyncpg_transaction_rollback_and_commit(table: str) -> None:
    """aadd joins an asyncpg transaction: rolled back, nothing; committed, published."""
    outbox = Outbox(table)
    sink = Recording()

    async def main() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await outbox.acreate_tables(conn)

            async def handler_that_fails() -> None:
                async with conn.transaction():
                    await outbox.aadd(conn, "orders.placed", b"lost")
                    raise RuntimeError

            with pytest.raises(RuntimeError):
                await handler_that_fails()
            async with conn.transaction():
                kept = await outbox.aadd(conn, "orders.placed", b"kept", key="k")
        finally:
            await conn.close()
        async with OutboxRelay(PG_URL, sink, table=table) as relay:
            assert await drain(relay) == 1
        assert sink.ids() == [kept]

    run(main())


def test_psycopg_sync_and_async_connections(table: str) -> None:
    """add works inside a psycopg transaction, aadd inside an async one."""
    outbox = Outbox(table)
    with psycopg.connect(PG_URL) as conn:
        outbox.create_tables(conn)
        with conn.transaction():
            first = outbox.add(conn, "orders.placed", b"sync")

        def handler_that_fails() -> None:
            with conn.transaction():
                outbox.add(conn, "orders.placed", b"lost")
                raise RuntimeError

        with pytest.raises(RuntimeError):
            handler_that_fails()
    sink = Recording()

    async def main() -> None:
        aconn = await psycopg.AsyncConnection.connect(PG_URL)
        async with aconn, aconn.transaction():
            second = await outbox.aadd(aconn, "orders.placed", b"async")
        async with OutboxRelay(PG_URL, sink, table=table) as relay:
            await drain(relay)
        assert sink.ids() == [first, second]

    run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sqlalchemy_session(tmp_path: Path, table: str, backend: str) -> None:
    """A SQLAlchemy Session is accepted: the row rides in the session's transaction."""
    url = f"sqlite:///{tmp_path / 'app.db'}" if backend == "sqlite" else PG_URL
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    outbox = Outbox(table)
    with Session(engine) as session:
        outbox.create_tables(session)
        session.commit()
        session.execute(text(f"CREATE TABLE IF NOT EXISTS {table}_orders (id TEXT)"))
        session.execute(text(f"INSERT INTO {table}_orders VALUES ('o1')"))
        kept = outbox.add(session, "orders.placed", b"kept", key="o1")
        session.commit()
        session.execute(text(f"INSERT INTO {table}_orders VALUES ('o2')"))
        outbox.add(session, "orders.placed", b"lost", key="o2")
        session.rollback()
        session.execute(text(f"DROP TABLE {table}_orders"))
        session.commit()
    engine.dispose()
    sink = Recording()

    async def main() -> None:
        async with OutboxRelay(url, sink, table=table) as relay:
            await drain(relay)

    run(main())
    assert sink.ids() == [kept]


def test_wrong_kind_of_connection_is_refused(tmp_path: Path) -> None:
    """add on an async driver, aadd on a blocking one, or neither: a TypeError that says so."""
    outbox = Outbox()
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(TypeError, match=r"blocking connection \(sqlite\): use `outbox.add"):
        run(outbox.aadd(conn, "t", b"x"))
    with pytest.raises(TypeError, match="'tx' must be a sqlite3, aiosqlite, psycopg or asyncpg"):
        outbox.add(object(), "t", b"x")

    async def main() -> None:
        aconn = await asyncpg.connect(PG_URL)
        try:
            with pytest.raises(TypeError, match=r"async connection \(asyncpg\): use `await"):
                outbox.add(aconn, "t", b"x")
        finally:
            await aconn.close()

    run(main())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o, c: o.add(c, "bad topic", b"x"), "'topic' must be dot-separated words"),
        (lambda o, c: o.add(c, "t", b"x", key=5), "'key' must be a string or None: 5"),
        (lambda o, c: o.add(c, "t", b"x", headers={"a": 1}), "'headers' must map strings"),
        (lambda o, c: Outbox("drop table;"), "'table' must be a SQL identifier"),
        (lambda o, c: Outbox(partitions=0), "'partitions' must be an integer >= 1: 0"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path: Path, call: Any, message: str) -> None:
    """Every refusal says which argument and which value."""
    outbox = Outbox()
    conn = sqlite3.connect(tmp_path / "x.db")
    outbox.create_tables(conn)
    with pytest.raises(ValueError) as info:
        call(outbox, conn)
    assert message in str(info.value)


def test_partition_follows_the_key() -> None:
    """One key, one partition (so its order holds); keyless rows spread by id."""
    assert partition_of("order-7", "a", 16) == partition_of("order-7", "b", 16)
    assert len({partition_of(None, str(i), 16) for i in range(200)}) == 16


# -- relaying -----------------------------------------------------------------------------------


def test_order_per_key_holds_across_batches(tmp_path: Path, table: str) -> None:
    """300 events over 5 keys and 2 topics in batches of 7: in each topic, each key's events
    arrive in the order written, once each."""
    outbox = Outbox(table)
    conn, url = sqlite_db(tmp_path, outbox)
    written: dict[tuple[str, str], list[str]] = {}
    for i in range(300):
        topic, key = f"topic.{i % 2}", f"k{i % 5}"
        with conn:
            written.setdefault((topic, key), []).append(
                outbox.add(conn, topic, str(i).encode(), key=key)
            )
    sink = Recording()

    async def main() -> None:
        async with OutboxRelay(url, sink, table=table, batch_size=7) as relay:
            assert await relay.relay_once() == 7
            await drain(relay)

    run(main())
    assert Counter(sink.ids()) == Counter(mid for ids in written.values() for mid in ids)
    for (topic, key), ids in written.items():
        assert [env.id for t, env in sink.sent if (t, env.key) == (topic, key)] == ids


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_relays_publish_each_row_once(tmp_path: Path, table: str, backend: str) -> None:
    """Three relays on one outbox, 1,500 rows: every row published exactly once, each key's
    rows in the order written."""
    outbox = Outbox(table)
    sink = Recording()
    written: dict[str, list[str]] = {}

    async def main() -> None:
        if backend == "sqlite":
            conn, url = sqlite_db(tmp_path, outbox)
            with conn:
                for i in range(1500):
                    key = f"k{i % 40}"
                    written.setdefault(key, []).append(outbox.add(conn, "t", b"x", key=key))
        else:
            url = PG_URL
            pg = await asyncpg.connect(PG_URL)
            await outbox.acreate_tables(pg)
            async with pg.transaction():
                for i in range(1500):
                    key = f"k{i % 40}"
                    written.setdefault(key, []).append(await outbox.aadd(pg, "t", b"x", key=key))
            await pg.close()
        relays = [
            OutboxRelay(url, sink, table=table, batch_size=50, poll_interval=0.01, owner=f"r{i}")
            for i in range(3)
        ]
        tasks = [asyncio.create_task(r.run()) for r in relays]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if len(sink.sent) >= 1500:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    run(main())
    counts = Counter(sink.ids())
    assert len(counts) == 1500
    assert set(counts.values()) == {1}
    for key, ids in written.items():
        assert [env.id for _, env in sink.sent if env.key == key] == ids, f"{key} out of order"


def test_listen_notify_wakes_the_relay_at_once(table: str) -> None:
    """With a 10 s poll, a commit still reaches the broker in well under a second."""
    sink = Recording()

    async def main() -> None:
        conn = await asyncpg.connect(PG_URL)
        relay = OutboxRelay(PG_URL, sink, table=table, poll_interval=10.0)
        await relay.open()
        task = asyncio.create_task(relay.run())
        try:
            await asyncio.sleep(0.2)
            started = time.monotonic()
            async with conn.transaction():
                await Outbox(table).aadd(conn, "t", b"wake up")
            for _ in range(400):
                if sink.sent:
                    break
                await asyncio.sleep(0.005)
            assert sink.sent
            assert time.monotonic() - started < 0.5
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await conn.close()

    run(main())


def test_without_listen_the_relay_polls(table: str) -> None:
    """listen=False: the store's wait times out (no notification) and polling finds rows."""
    sink = Recording()

    async def main() -> None:
        relay = OutboxRelay(PG_URL, sink, table=table, listen=False, poll_interval=0.05)
        async with relay:
            assert await relay.store.wait(0.05) is False
            conn = await asyncpg.connect(PG_URL)
            async with conn.transaction():
                await Outbox(table).aadd(conn, "t", b"polled")
            await conn.close()
            task = asyncio.create_task(relay.run())
            for _ in range(100):
                if sink.sent:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(sink.sent) == 1

    run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_lag_is_the_age_of_the_oldest_pending_row(tmp_path: Path, table: str, backend: str) -> None:
    """lag() grows while a row waits, and is 0 once everything is sent."""
    outbox = Outbox(table)
    sink = Recording()

    async def main() -> None:
        if backend == "sqlite":
            conn, url = sqlite_db(tmp_path, outbox)
            with conn:
                outbox.add(conn, "t", b"x")
        else:
            url = PG_URL
            pg = await asyncpg.connect(PG_URL)
            await outbox.acreate_tables(pg)
            async with pg.transaction():
                await outbox.aadd(pg, "t", b"x")
            await pg.close()
        async with OutboxRelay(url, sink, table=table) as relay:
            await asyncio.sleep(0.2)
            assert 0.15 < await relay.lag() < 5
            assert await relay.pending() == 1
            await drain(relay)
            assert await relay.lag() == 0.0
            assert await relay.pending() == 0

    run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_cleanup_deletes_only_old_sent_rows(tmp_path: Path, table: str, backend: str) -> None:
    """Sent rows older than the retention go; pending rows and recent ones stay."""
    outbox = Outbox(table)
    sink = Recording()

    async def main() -> None:
        if backend == "sqlite":
            conn, url = sqlite_db(tmp_path, outbox)
            with conn:
                for _ in range(3):
                    outbox.add(conn, "t", b"x")
        else:
            url = PG_URL
            pg = await asyncpg.connect(PG_URL)
            await outbox.acreate_tables(pg)
            async with pg.transaction():
                for _ in range(3):
                    await outbox.aadd(pg, "t", b"x")
            await pg.close()
        async with OutboxRelay(url, sink, table=table, retention=3600) as relay:
            await drain(relay)
            assert await relay.cleanup() == 0  # younger than the retention
            await asyncio.sleep(0.05)
            assert await relay.cleanup(older_than=0.01) == 3

    run(main())


def test_failed_publish_marks_nothing_and_retries(tmp_path: Path, table: str) -> None:
    """A broker error leaves the rows pending; the next batch publishes them."""
    outbox = Outbox(table)
    conn, url = sqlite_db(tmp_path, outbox)
    with conn:
        mid = outbox.add(conn, "t", b"x")
    sink = Recording()
    sink.fail = 1

    async def main() -> None:
        async with OutboxRelay(url, sink, table=table) as relay:
            with pytest.raises(ConnectionError, match="broker down"):
                await relay.relay_once()
            assert await relay.pending() == 1
            assert await relay.relay_once() == 1

    run(main())
    assert sink.ids() == [mid]


def test_run_backs_off_while_the_broker_is_down(tmp_path: Path, table: str) -> None:
    """run() keeps going through broker failures (the core Retry's backoff) and catches up."""
    outbox = Outbox(table)
    conn, url = sqlite_db(tmp_path, outbox)
    with conn:
        for _ in range(10):
            outbox.add(conn, "t", b"x")
    sink = Recording()
    sink.fail = 3

    async def main() -> None:
        relay = OutboxRelay(url, sink, table=table, retry=FAST, poll_interval=0.01)
        task = asyncio.create_task(relay.run())
        for _ in range(200):
            if len(sink.sent) == 10:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert relay.stats.failures == 3
        assert relay.stats.last_error == "ConnectionError: broker down"

    run(main())
    assert len(sink.sent) == 10
