"""The relay against real brokers and a real PostgreSQL: confirmed publishing through the
memory, SQLite and NATS JetStream brokers into an idempotent consumer (the inbox), the
LISTEN connection dying and coming back, and run()'s periodic cleanup."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections import Counter, defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from support import until

from interlink import Retry
from interlink.messaging import Broker, Envelope
from interlink.messaging.envelope import OutgoingMessage
from interlink.outbox import Outbox, OutboxRelay

T = TypeVar("T")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = "nats://127.0.0.1:4222"


class Sink:
    """A publisher that records the ids it is given."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        self.ids.append(message.message_id)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def drop_nats_stream(topic: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream("interlink:" + topic.replace(".", ":"))
    except nats.js.errors.NotFoundError:
        pass  # never created: nothing to drop
    finally:
        await nc.close()


@pytest.mark.parametrize("broker", ["memory", "sqlite", "nats"])
def test_relay_then_crash_replay_gives_effects_exactly_once(tmp_path: Path, broker: str) -> None:
    """200 events relayed through a real broker, then replayed as after a crash between the
    confirmation and the mark: the idempotent consumer runs each effect once, keys in order."""
    topic = f"orders.r{uuid.uuid4().hex[:10]}"
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'broker.db'}"}.get(
        broker, NATS_URL
    )
    app_db = tmp_path / "app.db"
    outbox = Outbox(table)
    conn = sqlite3.connect(app_db)
    outbox.create_tables(conn)
    written: dict[str, list[int]] = defaultdict(list)
    with conn:
        for n in range(200):
            key = f"k{n % 5}"
            outbox.add(conn, topic, str(n).encode(), key=key)
            written[key].append(n)
    effects: Counter[str] = Counter()
    seen: dict[str, list[int]] = defaultdict(list)

    async def main() -> None:
        bus = Broker.from_url(url, idempotency=f"sqlite:///{tmp_path / 'inbox.db'}")

        @bus.subscriber(topic, group="effects", idempotent=True)
        async def effect(env: Envelope) -> None:
            effects[env.id] += 1
            seen[str(env.key)].append(int(env.payload))

        try:
            async with bus:
                for _ in range(2):  # the second pass: rows marked pending again, as if the
                    async with OutboxRelay(  # relay had died before marking them sent
                        f"sqlite:///{app_db}", bus, table=table, batch_size=64
                    ) as relay:
                        while await relay.relay_once():
                            pass
                        assert await relay.pending() == 0
                    with conn:
                        conn.execute(f"UPDATE {table} SET sent_at = NULL")
                    await until(lambda: len(effects) == 200)
                await asyncio.sleep(0.2)  # room for a duplicate to slip through (it must not)
        finally:
            if broker == "nats":
                await drop_nats_stream(topic)

    try:
        run(main())
    finally:
        conn.close()
    assert set(effects.values()) == {1}
    assert dict(seen) == dict(written)


def test_relay_falls_back_to_polling_and_listens_again(tmp_path: Path) -> None:
    """The LISTEN connection is killed: the next row still arrives (polling), and the relay
    opens a new LISTEN connection instead of polling from then on."""
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    sink = Sink()
    got = sink.ids

    async def listeners(admin: Any, besides: int = 0) -> list[int]:
        """The backends LISTENing for the table, once there is one other than ``besides``."""
        for _ in range(150):
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND pid <> $2",
                f'LISTEN "{table}"',
                besides,
            )
            if rows:
                return [r[0] for r in rows]
            await asyncio.sleep(0.02)
        return []

    async def write(admin: Any) -> str:
        async with admin.transaction():
            return await Outbox(table).aadd(admin, "t", b"x")

    async def main() -> None:
        admin = await asyncpg.connect(PG_URL)
        relay = OutboxRelay(PG_URL, sink, table=table, poll_interval=0.2)
        task = asyncio.create_task(relay.run())
        try:
            [listener] = await listeners(admin)
            await admin.execute("SELECT pg_terminate_backend($1)", listener)
            first = await write(admin)
            await until(lambda: first in got)
            assert await listeners(admin, besides=listener), "the relay did not LISTEN again"
            second = await write(admin)
            await until(lambda: second in got)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await admin.execute(
                f"DROP TABLE IF EXISTS {table}, {table}_parts; "
                f"DROP FUNCTION IF EXISTS {table}_notify()"
            )
            await admin.close()

    run(main())


def test_run_cleans_up_sent_rows_by_age(tmp_path: Path) -> None:
    """run() deletes sent rows older than ``retention`` every ``cleanup_interval``."""
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(table)
    conn = sqlite3.connect(tmp_path / "app.db")
    outbox.create_tables(conn)
    with conn:
        for _ in range(5):
            outbox.add(conn, "t", b"x")
    sink = Sink()
    published = sink.ids

    def rows() -> int:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    async def main() -> None:
        relay = OutboxRelay(
            f"sqlite:///{tmp_path / 'app.db'}",
            sink,
            table=table,
            poll_interval=0.01,
            retention=0.05,
            cleanup_interval=0.1,
        )
        task = asyncio.create_task(relay.run())
        try:
            await until(lambda: len(published) == 5)
            await until(lambda: rows() == 0, 3.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(main())
    conn.close()


def test_postgres_inbox_commits_effects_and_next_event_together() -> None:
    """A handler guarded by the PostgreSQL inbox writes its state and its next event (outbox)
    in the inbox's transaction: a failed run leaves neither, the retry commits both, and a
    duplicate delivery adds nothing."""
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    topic = f"orders.p{uuid.uuid4().hex[:8]}"
    outbox = Outbox(table)
    runs: list[str] = []

    async def main() -> tuple[int, int]:
        from interlink.messaging import current_transaction

        admin = await asyncpg.connect(PG_URL)
        try:
            await outbox.acreate_tables(admin)
            await admin.execute(f"CREATE TABLE {table}_payments (order_id TEXT)")
            bus = Broker.from_url("memory://", idempotency=PG_URL)

            @bus.subscriber(
                topic,
                group=f"payments-{table}",
                idempotent=True,
                retry=Retry(retries=3, backoff=0.001, max_backoff=0.002, jitter="none"),
            )
            async def charge(env: Envelope) -> None:
                conn = current_transaction()
                order = env.payload.decode()
                await conn.execute(f"INSERT INTO {table}_payments VALUES ($1)", order)
                await outbox.aadd(conn, "payments.authorized", env.payload, key=order)
                runs.append(env.id)
                if len(runs) == 1:
                    raise ConnectionError("crashed after writing, before committing")

            async with bus:
                for _ in range(2):  # the second is a duplicate delivery
                    await bus.publish(topic, b"order-1", key="order-1", message_id="m-1")
                await until(lambda: len(runs) >= 2)
                await asyncio.sleep(0.2)  # room for the duplicate to be (not) handled
            paid = await admin.fetchval(f"SELECT count(*) FROM {table}_payments")
            events = await admin.fetchval(f"SELECT count(*) FROM {table}")
            return int(paid), int(events)
        finally:
            await admin.execute(
                f"DROP TABLE IF EXISTS {table}, {table}_parts, {table}_payments; "
                f"DROP FUNCTION IF EXISTS {table}_notify()"
            )
            await admin.close()

    assert run(main()) == (1, 1)
    assert runs == ["m-1", "m-1"]
