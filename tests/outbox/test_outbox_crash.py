"""The outbox survives kill -9 of its relay: while 10,000 events are written (some in
transactions that roll back), the relay process is killed and restarted at random; afterwards
every committed event was delivered, none of the rolled-back ones ever was, the idempotent
consumer ran each effect exactly once, and each key's events arrived in the order written.

The broker is the embedded SQLite one (a real, durable broker shared by processes); the
outbox lives in SQLite in one test and in PostgreSQL in the other.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import relay_worker

from interlink.messaging import Broker, Envelope
from interlink.outbox import Outbox

pytestmark = pytest.mark.slow  # processes killed with SIGKILL and restarted

WORKER = Path(relay_worker.__file__)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
KEYS = 25
KILLS_AT_LEAST = 5  # the relay is killed at least this often while events are written

# (a transaction's events as (key, n), commit it?) -> the message ids the outbox gave them
Writer = Callable[[list[tuple[str, int]], bool], Awaitable[list[str]]]


class Relays:
    """Relay processes killed with SIGKILL and restarted."""

    def __init__(self, db_url: str, table: str, broker_url: str) -> None:
        self.args = ["--db", db_url, "--table", table, "--broker", broker_url]
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self, owner: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *self.args, "--owner", owner],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.kills += 1


async def chaos(
    db_url: str,
    table: str,
    broker_url: str,
    write: Writer,
    pending: Callable[[], Awaitable[int]],
    *,
    count: int,
    seed: int,
) -> tuple[dict[str, tuple[str, int]], set[str], int]:
    """Write ``count`` events while killing relays; returns committed {id: (key, n)}, the ids
    of rolled-back events, and the number of kills.

    A relay dies after a random 0.15-0.55 s, or at the latest when the writes pass the next of
    ``KILLS_AT_LEAST`` evenly spaced marks, so a machine that writes fast (or slow) still sees
    the kills this test is about."""
    rng = random.Random(seed)
    relays = Relays(db_url, table, broker_url)
    relays.start("relay-0")
    committed: dict[str, tuple[str, int]] = {}
    rolled_back: set[str] = set()
    n = 0
    next_kill = time.monotonic() + 0.3
    marks = [count * (i + 1) // (KILLS_AT_LEAST + 1) for i in range(KILLS_AT_LEAST)]
    try:
        while n < count:
            events = []
            for _ in range(min(rng.randint(1, 12), count - n)):
                n += 1
                events.append((f"k{rng.randrange(KEYS)}", n))
            commit = rng.random() > 0.1
            ids = await write(events, commit)
            if commit:
                committed.update(zip(ids, events, strict=True))
            else:
                rolled_back.update(ids)
                n -= len(events)  # keep n dense per committed event: order checks read it
            if time.monotonic() >= next_kill or (marks and n >= marks[0]):
                while marks and n >= marks[0]:
                    marks.pop(0)
                relays.kill()
                # Half the restarts reuse the name (take the leases back at once), half
                # wait out the dead relay's leases.
                owner = "relay-0" if rng.random() < 0.5 else f"relay-{relays.kills}"
                relays.start(owner)
                next_kill = time.monotonic() + 0.15 + 0.4 * rng.random()
            await asyncio.sleep(0.0005 if rng.random() < 0.9 else 0.01)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not await pending():
                break
            await asyncio.sleep(0.05)
        assert await pending() == 0, "the relay did not drain the outbox"
    finally:
        relays.kill()
    return committed, rolled_back, relays.kills


class Consumers:
    """Two consumer groups of ``topic``, started before anything is published: "raw" records
    every delivery (duplicates included), "effects" is idempotent (the inbox)."""

    def __init__(self, broker_url: str, topic: str, idem_url: str) -> None:
        self.broker = Broker.from_url(broker_url, idempotency=idem_url)
        self.raw: list[tuple[str, str, int]] = []
        self.effects: dict[str, int] = defaultdict(int)

        @self.broker.subscriber(topic, group="raw")
        async def record(env: Envelope) -> None:
            body = json.loads(env.payload)
            self.raw.append((env.id, body["key"], body["n"]))

        @self.broker.subscriber(topic, group="effects", idempotent=True)
        async def effect(env: Envelope) -> None:
            self.effects[env.id] += 1

    async def drain(self, expected: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len(self.effects) >= expected and len({r[0] for r in self.raw}) >= expected:
                await asyncio.sleep(0.3)  # let stragglers (duplicates) arrive too
                return
            await asyncio.sleep(0.05)


def check(
    committed: dict[str, tuple[str, int]],
    rolled_back: set[str],
    raw: list[tuple[str, str, int]],
    effects: dict[str, int],
) -> None:
    delivered = {mid for mid, _, _ in raw}
    assert not delivered & rolled_back, "an event of a rolled-back transaction was published"
    missing = set(committed) - delivered
    assert not missing, f"{len(missing)} committed events never delivered"
    assert set(effects) == set(committed)
    assert set(effects.values()) == {1}, "an effect ran twice"
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for mid, key, n in raw:
        if mid not in seen:
            seen.add(mid)
            first_seen[key].append(n)
    for key, ns in first_seen.items():
        assert ns == sorted(ns), f"key {key} out of order"


@pytest.mark.timeout(90)
def test_sqlite_outbox_survives_relay_kill_9(tmp_path: Path) -> None:
    """10,000 events into a SQLite outbox, relay killed at random: delivered exactly once."""
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    app_db = tmp_path / "app.db"
    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    topic = f"orders.t{uuid.uuid4().hex[:8]}"
    outbox = Outbox(table)
    conn = sqlite3.connect(app_db, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    outbox.create_tables(conn)
    conn.execute("CREATE TABLE orders (n INTEGER PRIMARY KEY, key TEXT)")
    conn.commit()

    async def write(events: list[tuple[str, int]], commit: bool) -> list[str]:
        ids = []
        try:
            with conn:
                for key, n in events:
                    conn.execute("INSERT OR REPLACE INTO orders VALUES (?, ?)", (n, key))
                    body = json.dumps({"key": key, "n": n}).encode()
                    ids.append(outbox.add(conn, topic, body, key=key))
                if not commit:
                    raise LookupError("roll back")
        except LookupError:
            pass
        return ids

    async def pending() -> int:
        return int(
            conn.execute(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL").fetchone()[0]
        )

    async def main() -> None:
        consumers = Consumers(broker_url, topic, f"sqlite:///{tmp_path / 'inbox.db'}")
        async with consumers.broker:
            committed, rolled_back, kills = await chaos(
                f"sqlite:///{app_db}", table, broker_url, write, pending, count=10_000, seed=7
            )
            assert kills >= KILLS_AT_LEAST
            await consumers.drain(len(committed))
        check(committed, rolled_back, consumers.raw, consumers.effects)

    try:
        asyncio.run(main())
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_postgres_outbox_survives_relay_kill_9(tmp_path: Path) -> None:
    """10,000 events into a PostgreSQL outbox, relay killed at random: delivered exactly once."""
    table = f"outbox_{uuid.uuid4().hex[:8]}"
    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    topic = f"orders.t{uuid.uuid4().hex[:8]}"
    outbox = Outbox(table)

    async def main() -> None:
        conn = await asyncpg.connect(PG_URL)
        try:
            await outbox.acreate_tables(conn)

            async def write(events: list[tuple[str, int]], commit: bool) -> list[str]:
                ids = []
                tx = conn.transaction()
                await tx.start()
                for key, n in events:
                    body = json.dumps({"key": key, "n": n}).encode()
                    ids.append(await outbox.aadd(conn, topic, body, key=key))
                await (tx.commit() if commit else tx.rollback())
                return ids

            async def pending() -> int:
                return int(
                    await conn.fetchval(f"SELECT count(*) FROM {table} WHERE sent_at IS NULL")
                )

            consumers = Consumers(broker_url, topic, f"sqlite:///{tmp_path / 'inbox.db'}")
            async with consumers.broker:
                committed, rolled_back, kills = await chaos(
                    PG_URL, table, broker_url, write, pending, count=10_000, seed=11
                )
                assert kills >= KILLS_AT_LEAST
                await consumers.drain(len(committed))
            check(committed, rolled_back, consumers.raw, consumers.effects)
        finally:
            await conn.execute(
                f"DROP TABLE IF EXISTS {table}, {table}_parts; "
                f"DROP FUNCTION IF EXISTS {table}_notify()"
            )
            await conn.close()

    asyncio.run(main())
