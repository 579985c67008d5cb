"""The orchestrator on both stores: driving, compensating, parking, resuming, recovering."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel
from saga_helpers import Recorder, opened, run, unique_table

from interlink import Retry
from interlink.saga import (
    Orchestrator,
    SagaDefinition,
    SagaError,
    SagaNotFound,
    SagaStatus,
    Step,
    StepContext,
    StepStatus,
)
from interlink.saga.admin import load_saga, resume_saga
from interlink.saga.stores import SagaWrite

FAST = Retry(retries=1, backoff=0.001, max_backoff=0.01, jitter="none")


def three_steps(rec: Recorder, **options: Any) -> SagaDefinition:
    return SagaDefinition(
        "order",
        [
            Step(
                "create",
                rec.action("create", {"order": 1}),
                rec.compensation("create"),
                retry=FAST,
                compensation_retry=FAST,
            ),
            Step(
                "pay",
                rec.action("pay", {"paid": True}),
                rec.compensation("pay"),
                retry=FAST,
                compensation_retry=FAST,
            ),
            Step("notify", rec.action("notify"), retry=FAST),
        ],
        **options,
    )


def orchestrator(store: Any, *definitions: SagaDefinition, **options: Any) -> Orchestrator:
    options.setdefault("poll_interval", 0.05)
    return Orchestrator(store, definitions, **options)


def test_saga_runs_every_step_and_completes(store_url: str) -> None:
    """Three local steps run in order, with their keys; the results are kept."""
    rec = Recorder()

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, three_steps(rec)) as orch,
        ):
            sid = await orch.start("order", {"item": "pizza"}, saga_id="o-1")
            state = await orch.wait(sid)
            assert state.status is SagaStatus.COMPLETED
            assert state.results == {"create": {"order": 1}, "pay": {"paid": True}}
            assert [s.attempts for s in state.steps] == [1, 1, 1]

    run(main())
    assert rec.calls == [
        ("action", "create", 1, "o-1:create"),
        ("action", "pay", 1, "o-1:pay"),
        ("action", "notify", 1, "o-1:notify"),
    ]


def test_failed_step_compensates_in_reverse(store_url: str) -> None:
    """pay fails for good: pay and create are undone, in that order; notify never runs."""
    rec = Recorder()
    rec.fail["pay"] = -1

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, three_steps(rec)) as orch,
        ):
            state = await orch.wait(await orch.start("order", {}, saga_id="o-2"))
            assert state.status is SagaStatus.COMPENSATED
            assert state.step("pay").attempts == 2  # FAST allows one retry
            assert state.error == "step 'pay' failed after 2 attempt(s): RuntimeError: pay failed"

    run(main())
    assert rec.phases() == [
        ("action", "create"),
        ("action", "pay"),
        ("action", "pay"),
        ("compensation", "pay"),
        ("compensation", "create"),
    ]


def test_transient_failure_is_retried_with_backoff(store_url: str) -> None:
    """One failure, then success: attempt 2 runs under the same key and the saga completes."""
    rec = Recorder()
    rec.fail["pay"] = 1

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, three_steps(rec)) as orch,
        ):
            state = await orch.wait(await orch.start("order", {}, saga_id="o-3"))
            assert state.status is SagaStatus.COMPLETED
            assert state.step("pay").attempts == 2

    run(main())
    pays = [c for c in rec.calls if c[1] == "pay"]
    assert [(a, k) for _, _, a, k in pays] == [(1, "o-3:pay"), (2, "o-3:pay")]


def test_broken_compensation_parks_then_resumes_by_hand(store_url: str) -> None:
    """A compensation that keeps failing parks the saga; once fixed, resume finishes it."""
    rec = Recorder()
    rec.fail["pay"] = -1
    rec.fail["comp:create"] = -1

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, three_steps(rec)) as orch,
        ):
            sid = await orch.start("order", {})
            state = await orch.wait(sid)
            assert state.status is SagaStatus.NEEDS_ATTENTION
            assert state.error == (
                "compensation of step 'create' failed 2 time(s): RuntimeError: comp:create failed"
            )
            rec.fail["comp:create"] = 0  # someone fixed it
            await orch.resume(sid)
            state = await orch.wait(sid)
            assert state.status is SagaStatus.COMPENSATED
            assert state.step("create").compensations == 3

    run(main())


def test_saga_timeout_compensates(store_url: str) -> None:
    """A saga past its deadline stops going forward and compensates what it did."""
    rec = Recorder()

    async def slow(ctx: StepContext) -> None:
        await asyncio.sleep(5)

    definition = SagaDefinition(
        "slow",
        [
            Step("create", rec.action("create"), rec.compensation("create")),
            Step("wait", slow, retry=FAST, compensate_on_failure=False),
        ],
        timeout=0.3,
    )

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, definition) as orch,
        ):
            state = await orch.wait(await orch.start("slow", {}))
            assert state.status is SagaStatus.COMPENSATED
            assert state.step("wait").error == "TimeoutError"
            assert state.step("create").status is StepStatus.COMPENSATED

    run(main())


def test_step_timeout_is_a_failed_attempt(store_url: str) -> None:
    """An attempt over its step timeout fails and is retried like any failure."""
    attempts: list[int] = []

    async def sometimes_slow(ctx: StepContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)
        return "done"

    definition = SagaDefinition("t", [Step("call", sometimes_slow, timeout=0.1, retry=FAST)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, definition) as orch,
        ):
            state = await orch.wait(await orch.start("t", {}))
            assert state.status is SagaStatus.COMPLETED
            assert state.step("call").result == "done"

    run(main())
    assert attempts == [1, 2]


def test_start_is_idempotent_per_saga_id(store_url: str) -> None:
    """Starting the same id twice yields one saga, not two."""
    rec = Recorder()

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, three_steps(rec)) as orch,
        ):
            first = await orch.start("order", {}, saga_id="same")
            second = await orch.start("order", {}, saga_id="same")
            assert first == second == "same"
            await orch.wait("same")

    run(main())
    assert [c[1] for c in rec.calls] == ["create", "pay", "notify"]


def test_start_refuses_unknown_saga_and_bad_data(store_url: str) -> None:
    """Unknown definitions and data that does not validate are refused at once."""

    class Order(BaseModel):
        item: str

    definition = SagaDefinition("typed", [Step("a", Recorder().action("a"))], data_model=Order)

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            orch = orchestrator(store, definition)
            with pytest.raises(
                ValueError, match=r"no saga definition 'nope' here \(known: \['typed'\]\)"
            ):
                await orch.start("nope", {})
            with pytest.raises(ValueError, match="item"):
                await orch.start("typed", {"qty": 1})
            sid = await orch.start("typed", Order(item="pizza"))
            assert (await orch.get(sid)).data == {"item": "pizza"}

    run(main())


def test_unknown_saga_id_is_a_clear_error(store_url: str) -> None:
    """get and resume of an id that is not there raise SagaNotFound naming it."""

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            orch = orchestrator(store, three_steps(Recorder()))
            with pytest.raises(SagaNotFound, match="no saga with id 'ghost' in this store"):
                await orch.get("ghost")
            with pytest.raises(SagaNotFound):
                await resume_saga(store, "ghost")

    run(main())


def test_corrupt_row_is_parked_and_blocks_nothing(store_url: str) -> None:
    """A saga whose stored state is garbage is parked with the reason; the others complete."""
    rec = Recorder()
    table = unique_table()

    async def main() -> None:
        async with opened(store_url, table) as store:
            creator = orchestrator(store, three_steps(rec))  # not opened: start() only stores
            bad = await creator.start("order", {}, saga_id="bad")
            good = [await creator.start("order", {}) for _ in range(3)]
            row = await store.get(bad)
            assert row is not None
            assert await store.put_unowned(
                bad,
                SagaWrite(
                    state="{broken",
                    status="RUNNING",
                    wake_at=0.0,
                    updated_at=time.time(),
                    error=None,
                ),
                version=row.version,
            )
            async with orchestrator(store, three_steps(rec)) as orch:
                for sid in good:
                    assert (await orch.wait(sid)).status is SagaStatus.COMPLETED
                for _ in range(100):
                    row = await store.get(bad)
                    if row is not None and row.status == "NEEDS_ATTENTION":
                        break
                    await asyncio.sleep(0.02)
                assert row is not None
                assert row.status == "NEEDS_ATTENTION"
                assert row.error is not None
                assert row.error.startswith("stored state of saga 'bad' is corrupt: not JSON")
                with pytest.raises(SagaError, match="corrupt"):
                    await orch.resume(bad)

    run(main())


def test_data_that_no_longer_validates_parks_the_saga(store_url: str) -> None:
    """A stored payload the (new) model rejects parks its saga; other sagas go on."""

    class Old(BaseModel):
        item: str

    class New(BaseModel):
        item: str
        qty: int

    rec = Recorder()

    def definition(model: type[BaseModel]) -> SagaDefinition:
        return SagaDefinition("typed", [Step("a", rec.action("a"))], data_model=model)

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            old = await orchestrator(store, definition(Old)).start("typed", {"item": "x"})
            new = await orchestrator(store, definition(New)).start("typed", {"item": "y", "qty": 2})
            async with orchestrator(store, definition(New)) as orch:
                assert (await orch.wait(new)).status is SagaStatus.COMPLETED
                parked = await orch.wait(old)
                assert parked.status is SagaStatus.NEEDS_ATTENTION
                assert parked.error is not None
                assert parked.error.startswith("data no longer validates as New: ValidationError")
                assert parked.parked_from is SagaStatus.RUNNING

    run(main())


def test_restart_takes_its_own_sagas_back_at_once(store_url: str) -> None:
    """An orchestrator starting under the name of a dead one resumes its sagas without
    waiting for their leases; a differently named one waits."""
    rec = Recorder()

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            sid = await orchestrator(store, three_steps(rec)).start("order", {})
            # node-1 claimed it, then died holding a lease good for another minute.
            now = time.time()
            assert await store.claim(
                owner="node-1", names=["order"], now=now, lease_until=now + 60, limit=10
            )
            async with orchestrator(store, three_steps(rec), owner="node-2") as other:
                await asyncio.sleep(0.3)
                assert (await other.get(sid)).step("create").attempts == 0
            async with orchestrator(store, three_steps(rec), owner="node-1") as same:
                assert (await same.wait(sid, max_wait=5)).status is SagaStatus.COMPLETED

    run(main())


def test_two_orchestrators_never_run_one_saga_at_once(store_url: str) -> None:
    """Two orchestrators on one store share the sagas; no saga ever has two attempts at once."""
    running: set[str] = set()
    overlaps: list[str] = []

    def step(name: str) -> Any:
        async def act(ctx: StepContext) -> None:
            if ctx.saga_id in running:
                overlaps.append(ctx.saga_id)
            running.add(ctx.saga_id)
            await asyncio.sleep(0.002)
            running.discard(ctx.saga_id)

        return act

    definition = SagaDefinition("pair", [Step(n, step(n)) for n in ("a", "b", "c")])

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            creator = orchestrator(store, definition)
            ids = [await creator.start("pair", {}) for _ in range(60)]
            async with (
                orchestrator(store, definition, owner="x", max_concurrent=8) as x,
                orchestrator(store, definition, owner="y", max_concurrent=8) as y,
            ):
                for sid in ids:
                    assert (await x.wait(sid)).status is SagaStatus.COMPLETED
                assert y.owner != x.owner

    run(main(), 30)
    assert not overlaps


def test_lost_lease_stops_the_attempt(store_url: str) -> None:
    """When another owner takes the row, the running attempt is cancelled, not finished."""
    finished: list[int] = []

    async def long(ctx: StepContext) -> None:
        await asyncio.sleep(1.0)
        finished.append(ctx.attempt)

    definition = SagaDefinition("long", [Step("wait", long)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, definition, owner="a", lease=0.3) as orch,
        ):
            sid = await orch.start("long", {})
            await asyncio.sleep(0.1)
            now = time.time()
            row = await store.get(sid)
            assert row is not None
            # An intruder takes the saga over as if the lease had expired.
            await store.release(sid, owner="a", wake_at=now + 60)
            assert await store.claim(
                owner="b", names=["long"], now=now + 120, lease_until=now + 600, limit=1
            )
            await asyncio.sleep(0.4)
            assert orch.running == 0

    run(main())
    assert finished == []


def test_policy_wraps_a_remote_call(store_url: str) -> None:
    """A step's policy (any interlink policy) retries a flaky call inside one attempt."""
    calls: list[str] = []

    async def flaky_call(ctx: StepContext) -> str:
        calls.append(ctx.idempotency_key)
        if len(calls) < 3:
            raise ConnectionError("connection reset")
        return "accepted"

    policy = Retry(retries=3, backoff=0.001, max_backoff=0.002)
    definition = SagaDefinition("remote", [Step("call", flaky_call, retry=FAST, policy=policy)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            orchestrator(store, definition) as orch,
        ):
            state = await orch.wait(await orch.start("remote", {}, saga_id="r-1"))
            assert state.status is SagaStatus.COMPLETED
            assert state.step("call").attempts == 1  # the policy's retries are inside one attempt
            assert state.step("call").result == "accepted"

    run(main())
    assert calls == ["r-1:call"] * 3


def test_closing_hands_sagas_over_at_once(store_url: str) -> None:
    """aclose() releases the sagas it was driving: another orchestrator resumes them without
    waiting for the lease, re-running the interrupted attempt."""
    attempts: list[tuple[str, int]] = []

    async def slow_once(ctx: StepContext) -> None:
        attempts.append((ctx.idempotency_key, ctx.attempt))
        if ctx.attempt == 1:
            await asyncio.sleep(5)

    definition = SagaDefinition("handover", [Step("work", slow_once)])

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            first = orchestrator(store, definition, owner="first", lease=60.0)
            await first.open()
            sid = await first.start("handover", {}, saga_id="h-1")
            await asyncio.sleep(0.1)
            await first.aclose()
            async with orchestrator(store, definition, owner="second") as second:
                state = await second.wait(sid, max_wait=3)
                assert state.status is SagaStatus.COMPLETED
                assert state.step("work").interruptions == 0
                assert state.step("work").attempts == 2

    run(main())
    assert attempts == [("h-1:work", 1), ("h-1:work", 2)]


def test_state_is_on_disk_before_each_action_runs(store_url: str) -> None:
    """Inside every action and compensation, the stored row already shows that attempt in
    flight: a crash from here on re-runs it, it can never be skipped."""
    seen: list[tuple[str, bool, StepStatus, bool, int]] = []

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:

            def step(name: str, fail: bool = False) -> Any:
                async def run_step(ctx: StepContext) -> None:
                    stored = (await load_saga(store, ctx.saga_id)).step(ctx.step)
                    seen.append(
                        (name, ctx.compensating, stored.status, stored.in_flight, stored.attempts)
                    )
                    if fail and not ctx.compensating:
                        raise RuntimeError("declined")

                return run_step

            definition = SagaDefinition(
                "durable",
                [
                    Step("create", step("create"), step("create")),
                    Step("pay", step("pay", fail=True), step("pay"), retry=Retry(retries=0)),
                ],
            )
            async with orchestrator(store, definition) as orch:
                state = await orch.wait(await orch.start("durable", {}))
                assert state.status is SagaStatus.COMPENSATED

    run(main())
    assert seen == [
        ("create", False, StepStatus.RUNNING, True, 1),
        ("pay", False, StepStatus.RUNNING, True, 1),
        ("pay", True, StepStatus.COMPENSATING, True, 1),
        ("create", True, StepStatus.COMPENSATING, True, 1),
    ]


def test_status_column_that_disagrees_with_the_state_is_rewritten(store_url: str) -> None:
    """A finished saga whose row was set back to RUNNING by hand is written back as finished
    once, instead of being claimed and released at every poll."""
    rec = Recorder()

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            async with orchestrator(store, three_steps(rec)) as orch:
                sid = await orch.start("order", {}, saga_id="done")
                assert (await orch.wait(sid)).status is SagaStatus.COMPLETED
            row = await store.get(sid)
            assert row is not None
            assert await store.put_unowned(
                sid,
                SagaWrite(
                    state=row.state,
                    status="RUNNING",
                    wake_at=0.0,
                    updated_at=time.time(),
                    error=None,
                ),
                version=row.version,
            )
            async with orchestrator(store, three_steps(rec)):
                for _ in range(100):
                    row = await store.get(sid)
                    assert row is not None
                    if row.status == "COMPLETED":
                        break
                    await asyncio.sleep(0.02)
                version = row.version
                await asyncio.sleep(0.2)  # several polls: nothing claims it any more
                row = await store.get(sid)
                assert row is not None
                assert (row.status, row.version) == ("COMPLETED", version)

    run(main())
    assert [c[1] for c in rec.calls] == ["create", "pay", "notify"]
