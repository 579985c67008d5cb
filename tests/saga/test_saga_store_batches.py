"""Concurrent writes share statements on PostgreSQL, and stay fenced saga by saga."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from saga_helpers import PG_URL, opened, run, unique_table

from interlink.saga.stores import SagaRow, SagaWrite


def row(saga_id: str) -> SagaRow:
    now = time.time()
    return SagaRow(
        saga_id=saga_id,
        name="s",
        status="RUNNING",
        state="{}",
        version=0,
        owner=None,
        lease_until=0.0,
        wake_at=now,
        created_at=now,
        updated_at=now,
        error=None,
    )


def test_a_batch_of_saves_is_fenced_row_by_row() -> None:
    """50 concurrent saves: the ones with the right owner and version land, a stale version
    or a foreign owner changes nothing, and each caller learns its own outcome."""

    async def main() -> None:
        async with opened(PG_URL, unique_table()) as store:
            ids = [f"s{i}" for i in range(50)]
            made = await asyncio.gather(
                *(store.create(row(sid), owner="me", lease_until=time.time() + 60) for sid in ids)
            )
            assert all(m is not None and m.saga_id == sid for m, sid in zip(made, ids, strict=True))
            again = await store.create(row("s0"), owner="me", lease_until=0.0)
            assert again is None  # the id exists: start is idempotent

            def save(i: int, sid: str) -> Awaitable[bool]:
                write = SagaWrite(
                    state=f'{{"n":{i}}}',
                    status="RUNNING",
                    wake_at=0.0,
                    updated_at=time.time(),
                    error=None,
                )
                return store.save(
                    sid,
                    write,
                    owner="me" if i % 5 else "someone-else",
                    version=0 if i % 7 else 3,
                    release=i % 2 == 0,
                )

            saved = await asyncio.gather(*(save(i, sid) for i, sid in enumerate(ids)))
            expected = [bool(i % 5 and i % 7) for i in range(50)]
            assert saved == expected
            for i, sid in enumerate(ids):
                stored = await store.get(sid)
                assert stored is not None
                if expected[i]:
                    assert (stored.version, stored.state) == (1, f'{{"n":{i}}}')
                    assert stored.owner == (None if i % 2 == 0 else "me")
                else:
                    assert (stored.version, stored.state, stored.owner) == (0, "{}", "me")

    run(main())
