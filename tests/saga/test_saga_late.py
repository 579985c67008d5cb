"""A success that comes after the saga gave up must not leave its effect behind: the payment
service is down while the commands queue, every saga times out and compensates ("refund:
nothing to undo"), then the payment service comes back and works off its queue. On
PostgreSQL + NATS JetStream, as in production."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid

import pytest
from saga_helpers import PG_URL, opened, run, unique_table

from interlink import Retry
from interlink.messaging import Broker, Envelope
from interlink.saga import (
    CommandGuard,
    CommandRefused,
    Orchestrator,
    SagaDefinition,
    SagaStatus,
    Send,
    Step,
    StepContext,
    reply_body,
    reply_headers,
)
from interlink.saga.state import (
    ActionFailed,
    CompensationSucceeded,
    LateSuccess,
    SagaShape,
    StepShape,
    StepStatus,
    Wake,
    decide,
    new_state,
)

NATS_URL = "nats://127.0.0.1:4222"
ORDERS = 5


def nats_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 4222), 0.5):
        return True
    return False


@pytest.mark.skipif(not nats_up(), reason="needs NATS JetStream on 127.0.0.1:4222")
@pytest.mark.parametrize("guarded", [False, True], ids=["plain-participant", "command-guard"])
def test_late_authorizations_leave_no_money_taken(guarded: bool) -> None:
    """0 authorized payments on compensated orders afterwards. A plain participant authorizes
    late and the saga refunds it (same key); one with a CommandGuard refuses the late work."""
    uid = uuid.uuid4().hex[:10]
    authorize_topic, replies = f"pay{uid}.authorize", f"pay{uid}.replies"
    payments: dict[str, str] = {}  # the payment service's table: key -> authorized/refunded
    undone: list[str] = []

    async def main() -> None:
        guard = CommandGuard.from_url(PG_URL, table=f"guard_{uid}")

        async def create(ctx: StepContext) -> None:
            return None

        async def refund(ctx: StepContext) -> None:  # accepts "nothing to undo"
            key = f"{ctx.saga_id}:authorize_payment"
            if guarded:
                await guard.cancel({"saga-id": ctx.saga_id, "saga-step": "authorize_payment"})
            if payments.get(key) == "authorized":
                payments[key] = "refunded"
                undone.append(key)

        saga = SagaDefinition(
            "order",
            [
                Step("create_order", create, create),
                Step(
                    "authorize_payment",
                    Send(authorize_topic, reply_topic=replies, timeout=1.0),
                    refund,
                    retry=Retry(retries=0),
                ),
            ],
        )
        orders = Broker.from_url(NATS_URL)
        payment = Broker.from_url(NATS_URL)

        @payment.subscriber(authorize_topic, group=f"payments{uid}")
        async def authorize(env: Envelope) -> None:
            key = env.headers["idempotency-key"]
            try:
                if guarded:
                    await guard.admit(env.headers)
            except CommandRefused as refused:
                body = reply_body(ok=False, error=refused.error)
            else:
                payments.setdefault(key, "authorized")  # deduplicated by the key
                body = reply_body(result={"payment": key})
            await payment.publish(env.headers["reply-to"], body, headers=reply_headers(env.headers))

        async with opened(PG_URL, unique_table()) as store:
            orch = Orchestrator(store, [saga], publisher=orders, poll_interval=0.1)
            orch.subscribe_replies(orders, replies, group=f"orders{uid}")
            async with orders, orch:
                ids = [await orch.start("order", {"n": i}) for i in range(ORDERS)]
                for sid in ids:  # the payment service is down: every saga times out
                    assert (await orch.wait(sid, max_wait=20)).status is SagaStatus.COMPENSATED
                assert payments == {}
                async with payment:  # back up: it works off the queued commands
                    for _ in range(400):
                        settled = [await orch.get(sid) for sid in ids]
                        done = all(s.status is SagaStatus.COMPENSATED for s in settled)
                        answered = len(payments) == ORDERS or guarded
                        if done and answered and "authorized" not in payments.values():
                            break
                        await asyncio.sleep(0.05)
                    if guarded:
                        await asyncio.sleep(1.0)  # let the refused commands be answered
                late = orch.stats.late_successes
        await guard.drop()
        await guard.close()
        taken = [k for k, v in payments.items() if v == "authorized"]
        assert taken == []
        if guarded:
            assert payments == {}
            assert late == 0
        else:
            assert sorted(undone) == sorted(f"{sid}:authorize_payment" for sid in ids)
            assert late == ORDERS

    run(main(), 90.0)


SHAPE = SagaShape((StepShape("create"), StepShape("pay")))


def compensated() -> tuple[object, float]:
    d = decide(new_state("s", "x", SHAPE, None, at=0.0), Wake(0.0), SHAPE)
    d = decide(d.state, _ok(0, 1.0), SHAPE)
    d = decide(d.state, ActionFailed(1, 2.0, "TimeoutError"), SHAPE)  # gives up: compensate
    while d.state.status is SagaStatus.COMPENSATING:
        d = decide(d.state, CompensationSucceeded(d.command.index, 3.0), SHAPE)  # type: ignore[union-attr]
    assert d.state.status is SagaStatus.COMPENSATED
    return d, 3.0


def _ok(index: int, at: float) -> object:
    from interlink.saga.state import ActionSucceeded

    return ActionSucceeded(index, at)


def test_a_late_success_reopens_a_compensated_saga_to_undo_that_step_again() -> None:
    """The step is undone again, with the same idempotency key, and only that step."""
    d, _ = compensated()
    again = decide(d.state, LateSuccess(4.0, (1,)), SHAPE)  # type: ignore[attr-defined]
    assert again.state.status is SagaStatus.COMPENSATING
    assert again.command.index == 1  # type: ignore[union-attr]
    assert again.command.idempotency_key == "s:pay:compensation"  # type: ignore[union-attr]
    done = decide(again.state, CompensationSucceeded(1, 5.0), SHAPE)
    assert done.state.status is SagaStatus.COMPENSATED
    assert done.state.step("create").compensations == 1


def test_a_late_success_of_a_step_without_undo_parks_the_saga() -> None:
    """No compensation to run: NEEDS_ATTENTION, with the reason."""
    shape = SagaShape((StepShape("create"), StepShape("pay", has_compensation=False)))
    d = decide(new_state("s", "x", shape, None, at=0.0), Wake(0.0), shape)
    d = decide(d.state, _ok(0, 1.0), shape)  # type: ignore[arg-type]
    d = decide(d.state, ActionFailed(1, 2.0, "TimeoutError"), shape)
    d = decide(d.state, CompensationSucceeded(0, 3.0), shape)
    assert d.state.status is SagaStatus.COMPENSATED
    assert d.state.step("pay").status is StepStatus.FAILED
    parked = decide(d.state, LateSuccess(4.0, (1,)), shape)
    assert parked.state.status is SagaStatus.NEEDS_ATTENTION
    assert parked.state.error is not None
    assert "['pay'] succeeded after the saga gave up on them" in parked.state.error
