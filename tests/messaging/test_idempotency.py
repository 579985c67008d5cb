"""Idempotency stores: claim, skip what was done, release on failure, expire after the TTL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from interlink.messaging import InProgress, current_transaction
from interlink.messaging.idempotency import (
    IdempotencyStore,
    MemoryStore,
    PostgresStore,
    RedisStore,
    SqliteStore,
)
from interlink.testing import FakeClock

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], IdempotencyStore]:
    """A factory for one store kind (every call: a new client of the same store)."""
    urls = {
        "memory": None,
        "sqlite": f"sqlite:///{tmp_path}/idem.db",
        "redis": REDIS_URL,
        "postgres": PG_URL,
    }
    url = urls[request.param]
    shared = MemoryStore()
    return lambda: shared if url is None else IdempotencyStore.from_url(url, ttl=60)


async def _processed(store: IdempotencyStore, group: str, mid: str) -> bool:
    async with store.guard(group, mid) as fresh:
        return fresh


def test_second_guard_skips_a_processed_id(make_store: Callable[[], IdempotencyStore]) -> None:
    """Done once, the same (group, id) is skipped; another group still processes it."""

    async def body() -> tuple[bool, bool, bool]:
        store = make_store()
        await store.open()
        mid = uuid.uuid4().hex
        try:
            return (
                await _processed(store, "g", mid),
                await _processed(store, "g", mid),
                await _processed(store, "other", mid),
            )
        finally:
            await store.aclose()

    assert run(body()) == (True, False, True)


def test_failed_handler_releases_the_claim(make_store: Callable[[], IdempotencyStore]) -> None:
    """A block that raises leaves the id unprocessed, so the retry runs it."""

    async def body() -> bool:
        store = make_store()
        await store.open()
        mid = uuid.uuid4().hex
        try:
            with pytest.raises(RuntimeError):
                async with store.guard("g", mid):
                    raise RuntimeError("handler failed")
            return await _processed(store, "g", mid)
        finally:
            await store.aclose()

    assert run(body()) is True


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_live_claim_of_another_consumer_is_in_progress(kind: str, tmp_path: Path) -> None:
    """While one consumer works on an id, another is told to come back later."""
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/i.db", "redis": REDIS_URL}

    async def body() -> InProgress:
        first = second = IdempotencyStore.from_url(url[kind])
        if kind != "memory":
            second = IdempotencyStore.from_url(url[kind])
        mid = uuid.uuid4().hex
        try:
            async with first.guard("g", mid):
                with pytest.raises(InProgress) as caught:
                    async with second.guard("g", mid):
                        pass
            return caught.value
        finally:
            await first.aclose()
            await second.aclose()

    busy = run(body())
    assert 0 < busy.retry_after <= 60
    assert "being processed by another consumer" in str(busy)


def test_memory_records_expire_after_the_ttl() -> None:
    """After the TTL an id counts as new again; a dead claimant's claim ends with its lease."""
    clock = FakeClock()
    store = MemoryStore(ttl=100, lease=5, clock=clock)

    async def body() -> list[bool]:
        results = [await _processed(store, "g", "m")]
        clock.advance(99)
        results.append(await _processed(store, "g", "m"))
        clock.advance(2)
        results.append(await _processed(store, "g", "m"))
        cm = store.guard("g", "stuck")
        await cm.__aenter__()  # a claimant that never finishes
        clock.advance(6)
        results.append(await _processed(store, "g", "stuck"))
        return results

    assert run(body()) == [True, False, True, True]


def test_bad_store_options_are_refused() -> None:
    """TTL and lease are positive numbers; unknown URLs are named."""
    with pytest.raises(ValueError, match="'ttl' must be a finite number > 0: 0"):
        MemoryStore(ttl=0)
    with pytest.raises(ValueError, match="'lease' must be a finite number > 0: -1"):
        SqliteStore("x.db", lease=-1)
    with pytest.raises(ValueError, match="'idempotent' must be True or a store URL"):
        IdempotencyStore.from_url("mongodb://x")
    assert isinstance(IdempotencyStore.from_url("redis://localhost"), RedisStore)
    assert isinstance(IdempotencyStore.from_url("postgres://localhost/db"), PostgresStore)


class TestPostgresSharedTransaction:
    """With PostgreSQL, the handler's writes and the record commit or roll back together."""

    table = f"idem_effects_{uuid.uuid4().hex[:8]}"

    def _sql(self, sql: str) -> list[Any]:
        async def go() -> list[Any]:
            import asyncpg  # type: ignore[import-untyped]

            conn = await asyncpg.connect(PG_URL)
            try:
                rows: list[Any] = await conn.fetch(sql)
                return rows
            finally:
                await conn.close()

        rows: list[Any] = run(go())
        return rows

    @pytest.fixture(autouse=True)
    def _table(self) -> Any:
        self._sql(f"CREATE TABLE {self.table}(id TEXT NOT NULL)")
        yield
        self._sql(f"DROP TABLE {self.table}")

    def test_effects_and_record_commit_together(self) -> None:
        """A successful block commits its effect and the record: the next guard skips."""

        async def body() -> bool:
            store = PostgresStore(PG_URL)
            mid = uuid.uuid4().hex
            try:
                async with store.guard("g", mid) as fresh:
                    assert fresh
                    await current_transaction().execute(
                        f"INSERT INTO {self.table}(id) VALUES ($1)", mid
                    )
                return await _processed(store, "g", mid)
            finally:
                await store.aclose()

        assert run(body()) is False
        assert len(self._sql(f"SELECT id FROM {self.table}")) == 1

    def test_failure_rolls_back_effects_and_record(self) -> None:
        """A block that raises undoes its effect too, and the id stays unprocessed."""

        async def body() -> bool:
            store = PostgresStore(PG_URL)
            mid = uuid.uuid4().hex

            async def failing() -> None:
                async with store.guard("g", mid):
                    await current_transaction().execute(
                        f"INSERT INTO {self.table}(id) VALUES ($1)", mid
                    )
                    raise RuntimeError("after the write")

            try:
                with pytest.raises(RuntimeError):
                    await failing()
                return await _processed(store, "g", mid)
            finally:
                await store.aclose()

        assert run(body()) is True
        assert self._sql(f"SELECT id FROM {self.table}") == []

    def test_concurrent_duplicate_waits_then_skips(self) -> None:
        """Two consumers of one id: the second waits on the first's row and then skips."""

        async def body() -> list[bool]:
            store = PostgresStore(PG_URL)
            mid = uuid.uuid4().hex
            inside = asyncio.Event()
            order: list[bool] = []

            async def first() -> None:
                async with store.guard("g", mid) as fresh:
                    inside.set()
                    await asyncio.sleep(0.1)
                    order.append(fresh)

            async def second() -> None:
                await inside.wait()
                async with store.guard("g", mid) as fresh:
                    order.append(fresh)

            try:
                await asyncio.gather(first(), second())
            finally:
                await store.aclose()
            return order

        assert run(body()) == [True, False]

    def test_no_transaction_outside_a_guard(self) -> None:
        """current_transaction() is None outside a PostgreSQL-guarded handler."""
        assert current_transaction() is None
