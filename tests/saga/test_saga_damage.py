"""Damaged rows and replies are parked with the reason, never looped on, on both stores."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from saga_helpers import PG_URL, opened, run, unique_table
from test_saga_send import ONCE

from interlink import Retry
from interlink.messaging import Broker, Envelope
from interlink.saga import (
    CorruptSagaState,
    Orchestrator,
    SagaDefinition,
    SagaStatus,
    SagaStore,
    Send,
    Step,
    StepContext,
    reply_headers,
)
from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.state import SagaShape, StepShape, new_state
from interlink.saga.stores import SagaWrite

FAST = Retry(retries=1, backoff=0.001, max_backoff=0.01, jitter="none")


async def ok(ctx: StepContext) -> dict[str, str]:
    return {"done": ctx.step}


def two_steps() -> SagaDefinition:
    return SagaDefinition(
        "order", [Step("create", ok, ok, retry=FAST), Step("pay", ok, ok, retry=FAST)]
    )


def stored(**step_fields: object) -> str:
    shape = SagaShape((StepShape("create"), StepShape("pay")))
    doc = json.loads(state_to_json(new_state("s1", "order", shape, {}, at=1.0)))
    doc["steps"][0].update(step_fields)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"attempts": "two"}, "'steps[0].attempts' must be int, got 'two'"),
        ({"attempts": True}, "'steps[0].attempts' must be int, got True"),
        ({"attempts": -1}, "'steps[0].attempts' must be >= 0"),
        ({"in_flight": 1}, "'steps[0].in_flight' must be bool, got 1"),
        ({"next_at": "soon"}, "'steps[0].next_at' must be a finite number, got 'soon'"),
        ({"error": 7}, "'steps[0].error' must be str, got 7"),
        ({"name": None}, "'steps[0].name' must be str, got None"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_corrupt_state(
    fields: dict[str, object], problem: str
) -> None:
    """Types are checked when a row is read: the error names the field, the type and the value."""
    with pytest.raises(CorruptSagaState) as info:
        state_from_json("s1", stored(**fields))
    assert problem in str(info.value)


def test_a_row_with_a_wrong_type_is_parked_not_reclaimed(store_url: str) -> None:
    """steps[0].attempts = "two" parks the saga in NEEDS_ATTENTION with the reason, at once,
    and releases it; other sagas complete."""

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            creator = Orchestrator(store, [two_steps()])  # not opened: start() only stores
            bad = await creator.start("order", {}, saga_id="bad")
            good = await creator.start("order", {})
            row = await store.get(bad)
            assert row is not None
            doc = json.loads(row.state)
            doc["steps"][0]["attempts"] = "two"
            assert await store.put_unowned(
                bad,
                SagaWrite(
                    state=json.dumps(doc),
                    status="RUNNING",
                    wake_at=0.0,
                    updated_at=time.time(),
                    error=None,
                ),
                version=row.version,
            )
            async with Orchestrator(store, [two_steps()], poll_interval=0.05) as orch:
                assert (await orch.wait(good)).status is SagaStatus.COMPLETED
                for _ in range(200):
                    row = await store.get(bad)
                    assert row is not None
                    if row.status == "NEEDS_ATTENTION":
                        break
                    await asyncio.sleep(0.02)
                assert row.status == "NEEDS_ATTENTION"
                assert row.owner is None
                assert row.error is not None
                assert "'steps[0].attempts' must be int, got 'two'" in row.error

    run(main())


def test_a_reply_with_a_nul_byte_parks_the_saga(store_url: str) -> None:
    """A reply body holding a NUL byte is kept (as bytes) and parks its saga as an invalid
    reply; the command is not sent again."""
    seen: list[dict[str, str]] = []

    async def main() -> None:
        broker = Broker.from_url("memory://")

        @broker.subscriber("payments.authorize", group="payments")
        async def authorize(env: Envelope) -> None:
            seen.append(dict(env.headers))
            body = b'{"ok": true, "result": "\x00"}'
            await broker.publish(env.headers["reply-to"], body, headers=reply_headers(env.headers))

        definition = SagaDefinition(
            "order",
            [
                Step(
                    "pay",
                    Send("payments.authorize", reply_topic="payments.replies", timeout=5.0),
                    ok,
                    retry=ONCE,
                )
            ],
        )
        async with opened(store_url, unique_table()) as store:
            orch = Orchestrator(store, [definition], publisher=broker, poll_interval=0.05)
            orch.subscribe_replies(broker, "payments.replies")
            async with broker, orch:
                sid = await orch.start("order", {"total": 3})
                state = await orch.wait(sid, max_wait=10.0)
                assert state.status is SagaStatus.NEEDS_ATTENTION
                assert state.error is not None
                assert "reply to step 'pay' is invalid: not JSON" in state.error
                kept = await store.get_reply(sid, "pay")
                assert kept is not None
                assert b"\x00" in kept[1]
        assert len(seen) == 1

    run(main())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_any_reply_bytes_are_kept_exactly(kind: str, tmp_path: Path) -> None:
    """Whatever bytes a reply holds (NUL, invalid UTF-8, nothing), both stores keep them
    exactly, and a later attempt's reply replaces an earlier one's, never the reverse."""
    url = PG_URL if kind == "postgres" else f"sqlite:///{tmp_path / 's.db'}"
    loop = asyncio.new_event_loop()
    store = SagaStore.from_url(url, table=unique_table())
    loop.run_until_complete(store.open())

    async def round_trip(first: bytes, second: bytes) -> None:
        await store.put_reply("s", "pay", 2, first)
        assert await store.get_reply("s", "pay") == (2, first)
        await store.put_reply("s", "pay", 1, second)  # late: an earlier attempt's answer
        assert await store.get_reply("s", "pay") == (2, first)
        await store.put_reply("s", "pay", 3, second)
        assert await store.get_reply("s", "pay") == (3, second)
        await store.clear_reply("s", "pay")

    @settings(max_examples=60, deadline=None)
    @given(first=st.binary(max_size=300), second=st.binary(max_size=300))
    def check(first: bytes, second: bytes) -> None:
        loop.run_until_complete(round_trip(first, second))

    try:
        check()
    finally:
        loop.run_until_complete(store.drop())
        loop.run_until_complete(store.close())
        loop.close()
