"""The contract suite on the embedded SQLite broker, plus its own durability and fault tests."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import until

from interlink.messaging import BackendUnavailable, Broker

from .contract import BackendContract, Order, check_key_order_survives_retries


class TestSqliteContract(BackendContract):
    """Every contract test against ``sqlite:///<tmp>/broker.db``."""

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    def make_backend_url(self) -> str:
        return f"sqlite:///{self.directory}/broker.db"


def _url(directory: Path, **query: object) -> str:
    options = "&".join(f"{k}={v}" for k, v in query.items())
    return f"sqlite:///{directory}/broker.db" + (f"?{options}" if options else "")


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15))


def test_messages_survive_closing_the_broker(tmp_path: Path) -> None:
    """Published and closed, a message is still there for a consumer started later."""

    async def body() -> list[int]:
        publisher = Broker.from_url(_url(tmp_path))
        await publisher.publish_many("t", [Order(order_id=i) for i in range(5)])
        await publisher.stop()
        got: list[int] = []
        consumer = Broker.from_url(_url(tmp_path))

        @consumer.subscriber("t", group="late")
        async def handle(message: Order) -> None:
            got.append(message.order_id)

        async with consumer:
            await until(lambda: len(got) == 5)
        return got

    assert run(body()) == [0, 1, 2, 3, 4]


def test_a_new_group_on_a_used_topic_starts_at_the_end(tmp_path: Path) -> None:
    """The first group gets the backlog; a group added later gets only newer messages."""

    async def body() -> dict[str, list[int]]:
        broker = Broker.from_url(_url(tmp_path))
        await broker.publish("t", Order(order_id=1))
        got: dict[str, list[int]] = {"first": [], "second": []}

        @broker.subscriber("t", group="first")
        async def first(message: Order) -> None:
            got["first"].append(message.order_id)

        async with broker:
            await until(lambda: got["first"] == [1])
        late = Broker.from_url(_url(tmp_path))

        @late.subscriber("t", group="second")
        async def second(message: Order) -> None:
            got["second"].append(message.order_id)

        async with late:
            await late.publish("t", Order(order_id=2))
            await until(lambda: got["second"] == [2])
        return got

    assert run(body()) == {"first": [1], "second": [2]}


def test_key_order_survives_retries(tmp_path: Path) -> None:
    """A retried message holds back its key's later messages (strict FIFO per key)."""
    run(check_key_order_survives_retries(Broker.from_url(_url(tmp_path))))


def test_live_consumer_keeps_its_lease(tmp_path: Path) -> None:
    """A handler running longer than the visibility timeout is not handed to another
    consumer: the lease is extended while the consumer lives."""
    url = _url(tmp_path, visibility=0.3)
    calls: list[str] = []

    def consumer(name: str) -> Broker:
        broker = Broker.from_url(url)

        @broker.subscriber("t", group="g")
        async def handle(message: bytes) -> None:
            calls.append(name)
            await asyncio.sleep(1.0)

        return broker

    async def body() -> None:
        async with consumer("a") as a, consumer("b"):
            await a.publish("t", b"slow")
            await until(lambda: len(calls) == 1)
            await asyncio.sleep(1.2)

    run(body())
    assert len(calls) == 1


def test_messages_every_group_finished_are_deleted(tmp_path: Path) -> None:
    """Acked by every group, a message's row is collected; the file does not grow forever."""
    url = _url(tmp_path, visibility=0.3)
    got: list[bytes] = []

    async def body() -> None:
        broker = Broker.from_url(url)

        @broker.subscriber("t", group="g")
        async def handle(message: bytes) -> None:
            got.append(message)

        async with broker:
            await broker.publish_many("t", [b"x"] * 20)
            await until(lambda: len(got) == 20)
            await until(lambda: _rows(tmp_path, "il_messages") == 0)
        assert _rows(tmp_path, "il_queue") == 0

    run(body())


def _rows(directory: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(directory / "broker.db")) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_wal_and_synchronous_mode_are_set(tmp_path: Path) -> None:
    """The file is in WAL mode; the durability mode comes from the URL."""

    async def body() -> None:
        broker = Broker.from_url(_url(tmp_path, synchronous="full"))
        await broker.publish("t", b"x")
        await broker.stop()

    run(body())
    with contextlib.closing(sqlite3.connect(tmp_path / "broker.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///x.db?visibility=0", "'visibility' must be a finite number > 0: 0.0"),
        ("sqlite:///x.db?poll=-1", "'poll' must be a finite number > 0: -1.0"),
        ("sqlite:///x.db?synchronous=fast", "'synchronous' must be one of OFF, NORMAL"),
        ("sqlite://", "'url' must name a file"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    """Options in the URL are checked when the broker is made."""
    with pytest.raises(ValueError, match=message):
        Broker.from_url(url)


def test_unwritable_path_is_unavailable(tmp_path: Path) -> None:
    """A file that cannot be opened fails at connect with BackendUnavailable."""

    async def body() -> None:
        await Broker.from_url(f"sqlite:///{tmp_path}/missing/dir/broker.db").connect()

    with pytest.raises(BackendUnavailable, match="unable to open database file"):
        run(body())


def test_an_empty_lease_does_not_hide_a_settle_later_in_its_batch(tmp_path: Path) -> None:
    """The store remembers an empty lease to skip the next query; a nack written after it in
    the same transaction must still make the next lease look again."""
    import time

    from interlink.messaging.backends.sqlite._store import Store

    store = Store(str(tmp_path / "broker.db"))
    try:
        gid = store.ensure_group("t", "g")
        store.publish("t", [("m1", None, b"payload", {})])
        store.commit()
        [(seq, attempt, *_)], _ = store.lease(gid, "t", 10, visibility=30.0)
        store.commit()
        # one worker batch: a lease that finds nothing, then the nack of the leased row
        assert store.lease(gid, "t", 10, visibility=30.0)[0] == []
        store.settle([(gid, seq, attempt, time.time() - 1)])
        store.commit()
        rows, _ = store.lease(gid, "t", 10, visibility=30.0)
        assert [(row[0], row[1]) for row in rows] == [(seq, attempt + 1)]
    finally:
        store.close()


def test_dead_letters_are_kept_for_their_retention(tmp_path: Path) -> None:
    """The DLQ keeps at most ``dlq_max_count`` letters per topic (the newest) and none older
    than ``dlq_max_age``; the file vacuums incrementally and caps its WAL."""
    import contextlib
    import sqlite3

    from interlink.messaging.backends.sqlite._store import Store

    store = Store(str(tmp_path / "broker.db"), wal_max_bytes=1 << 20)
    try:
        gid = store.ensure_group("t", "g")
        store.publish("t", [(f"m{i}", None, b"x", {}) for i in range(5)])
        rows, _ = store.lease(gid, "t", 10, visibility=30.0)
        for seq, attempt, *_ in rows:
            store.dead_letter((gid, seq, attempt), "g", "boom", "ValueError", None)
        store.commit()
        store.retain(max_age=3600.0, max_count=3)
        store.commit()
        assert [letter.id for letter in store.dlq_list("t", 10)] == ["m2", "m3", "m4"]
        store.retain(max_age=1e-9, max_count=3)
        store.vacuum(100)
        store.commit()
        assert store.dlq_count("t") == 0
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "broker.db")) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental


def test_retention_options_come_from_the_url(tmp_path: Path) -> None:
    """``dlq_max_age``, ``dlq_max_count`` and ``wal_max_bytes`` are URL options, checked."""
    from interlink.messaging.backends.sqlite import SqliteBackend

    backend = SqliteBackend(f"sqlite:///{tmp_path}/b.db?dlq_max_age=60&dlq_max_count=5")
    assert (backend.dlq_max_age, backend.dlq_max_count) == (60.0, 5)
    with pytest.raises(ValueError, match="'dlq_max_count' must be an integer >= 1: '0'"):
        SqliteBackend(f"sqlite:///{tmp_path}/b.db?dlq_max_count=0")
