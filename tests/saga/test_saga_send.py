"""Steps that send a command over the broker and wait for the reply event; and the seed's
payment design: the order is confirmed at once, payment runs async, and a payment failure
later cancels the order and tells the customer."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import pytest
from pydantic import BaseModel
from saga_helpers import opened, run, unique_table

from interlink import Retry
from interlink.messaging import Broker, Envelope
from interlink.saga import (
    InvalidReply,
    Orchestrator,
    SagaDefinition,
    SagaNotFound,
    SagaStatus,
    Send,
    Step,
    StepContext,
    reply_body,
    reply_headers,
)

ONCE = Retry(retries=0)


class Authorized(BaseModel):
    payment_id: str


def payment_service(broker: Broker, answer: Any, seen: list[dict[str, str]]) -> None:
    """A payment service: deduplicates by idempotency key, answers what ``answer`` says."""

    @broker.subscriber("payments.authorize", group="payments")
    async def authorize(env: Envelope) -> None:
        seen.append(dict(env.headers))
        reply = answer(env)
        if inspect.isawaitable(reply):
            reply = await reply
        if reply is None:
            return  # never answers
        await broker.publish(env.headers["reply-to"], reply, headers=reply_headers(env.headers))


def order_saga(events: list[str], *, timeout: float = 2.0) -> SagaDefinition:
    async def create(ctx: StepContext) -> None:
        events.append("confirmed")

    async def cancel(ctx: StepContext) -> None:
        events.append("cancelled")
        events.append("customer notified")

    async def refund(ctx: StepContext) -> None:
        events.append("refund")

    return SagaDefinition(
        "order",
        [
            Step("create_order", create, cancel),
            Step(
                "authorize_payment",
                Send(
                    "payments.authorize",
                    reply_topic="payments.replies",
                    timeout=timeout,
                    reply_model=Authorized,
                ),
                refund,
                retry=ONCE,
            ),
        ],
    )


def scenario(store_url: str, answer: Any, check: Any, *, timeout: float = 2.0) -> None:
    events: list[str] = []
    seen: list[dict[str, str]] = []

    async def main() -> None:
        broker = Broker.from_url("memory://")
        payment_service(broker, answer, seen)
        async with opened(store_url, unique_table()) as store:
            orch = Orchestrator(
                store, [order_saga(events, timeout=timeout)], publisher=broker, poll_interval=0.05
            )
            orch.subscribe_replies(broker, "payments.replies")
            async with broker, orch:
                await check(orch, events, seen)

    run(main())


def test_command_and_reply_complete_the_step(store_url: str) -> None:
    """The command carries the saga headers; an ok reply is validated and kept as the result."""

    async def check(orch: Orchestrator, events: list[str], seen: list[dict[str, str]]) -> None:
        sid = await orch.start("order", {"total": 12}, saga_id="o-1")
        state = await orch.wait(sid)
        assert state.status is SagaStatus.COMPLETED
        assert state.step("authorize_payment").result == {"payment_id": "p-1"}
        assert seen[0]["idempotency-key"] == "o-1:authorize_payment"
        assert seen[0]["saga-id"] == "o-1"
        assert seen[0]["reply-to"] == "payments.replies"

    scenario(store_url, lambda env: reply_body(result={"payment_id": "p-1"}), check)


def test_order_confirmed_at_once_payment_failure_cancels_and_notifies(store_url: str) -> None:
    """start() returns once the saga is durable and the order is confirmed before payment
    answers; a declined payment later cancels the order and notifies the customer."""
    gate = asyncio.Event()

    async def slow_decline(env: Envelope) -> bytes:
        await gate.wait()  # a slow payment provider
        return reply_body(ok=False, error="card declined")

    async def check(orch: Orchestrator, events: list[str], seen: list[dict[str, str]]) -> None:
        sid = await orch.start("order", {"total": 12})
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        assert events == ["confirmed"]
        assert (await orch.get(sid)).status is SagaStatus.RUNNING  # payment still pending
        gate.set()
        state = await orch.wait(sid)
        assert state.status is SagaStatus.COMPENSATED
        assert state.step("authorize_payment").error == (
            "StepFailed: step 'authorize_payment' was refused: card declined"
        )
        assert events == ["confirmed", "refund", "cancelled", "customer notified"]

    scenario(store_url, slow_decline, check)


def test_no_reply_in_time_fails_the_step(store_url: str) -> None:
    """A command nobody answers times out; the saga compensates."""

    async def check(orch: Orchestrator, events: list[str], seen: list[dict[str, str]]) -> None:
        state = await orch.wait(await orch.start("order", {}))
        assert state.status is SagaStatus.COMPENSATED
        assert state.step("authorize_payment").error == (
            "TimeoutError: no reply to 'authorize_payment' within 0.3 s"
        )

    scenario(store_url, lambda env: None, check, timeout=0.3)


def test_reply_that_does_not_validate_parks_the_saga(store_url: str) -> None:
    """An ok reply whose result fails the reply model parks the saga with the reason."""

    async def check(orch: Orchestrator, events: list[str], seen: list[dict[str, str]]) -> None:
        state = await orch.wait(await orch.start("order", {}))
        assert state.status is SagaStatus.NEEDS_ATTENTION
        assert state.error is not None
        assert state.error.startswith(
            "reply to step 'authorize_payment' is invalid: ValidationError"
        )

    scenario(store_url, lambda env: reply_body(result={"wrong": 1}), check)


def test_reply_that_is_not_json_parks_the_saga(store_url: str) -> None:
    """A reply body that is not a saga reply parks the saga; nothing else is blocked."""

    async def check(orch: Orchestrator, events: list[str], seen: list[dict[str, str]]) -> None:
        state = await orch.wait(await orch.start("order", {}))
        assert state.status is SagaStatus.NEEDS_ATTENTION
        assert state.error == (
            "reply to step 'authorize_payment' is invalid: expected a JSON object with a "
            'boolean "ok"'
        )

    scenario(store_url, lambda env: json.dumps([1]).encode(), check)


def test_replies_for_unknown_sagas_are_refused(tmp_path: Any) -> None:
    """deliver_reply names an unknown saga id, and refuses replies without saga headers."""

    async def main() -> None:
        async with opened(f"sqlite:///{tmp_path / 's.db'}", unique_table()) as store:
            orch = Orchestrator(store, [order_saga([])], publisher=Broker.from_url("memory://"))
            headers = {"saga-id": "ghost", "saga-step": "authorize_payment", "saga-attempt": "1"}
            with pytest.raises(SagaNotFound, match="'ghost'"):
                await orch.deliver_reply(headers, reply_body())
            with pytest.raises(InvalidReply, match="missing saga-id/saga-step/saga-attempt"):
                await orch.deliver_reply({}, reply_body())

    run(main())


def test_send_steps_need_a_publisher() -> None:
    """An orchestrator for a saga with commands but no publisher is refused at once."""
    with pytest.raises(ValueError, match=r"'publisher' is needed: steps \['authorize_payment'\]"):
        Orchestrator("sqlite:///unused.db", [order_saga([])])


def test_saga_deadline_cuts_a_reply_wait_short(store_url: str) -> None:
    """A Send waiting for a reply stops at the saga's deadline, not at its own longer timeout;
    the saga compensates."""
    events: list[str] = []

    async def create(ctx: StepContext) -> None:
        events.append("confirmed")

    async def cancel(ctx: StepContext) -> None:
        events.append("cancelled")

    definition = SagaDefinition(
        "order",
        [
            Step("create_order", create, cancel),
            Step(
                "authorize_payment",
                Send("payments.authorize", reply_topic="payments.replies", timeout=30.0),
                retry=ONCE,
                compensate_on_failure=False,
            ),
        ],
        timeout=0.3,
    )

    async def main() -> None:
        broker = Broker.from_url("memory://")
        payment_service(broker, lambda env: None, [])  # never answers
        async with opened(store_url, unique_table()) as store:
            orch = Orchestrator(store, [definition], publisher=broker, poll_interval=0.05)
            async with broker, orch:
                state = await orch.wait(await orch.start("order", {}), max_wait=5)
                assert state.status is SagaStatus.COMPENSATED
                error = state.step("authorize_payment").error
                assert error is not None
                assert error.startswith("TimeoutError: no reply to 'authorize_payment' within 0.")

    run(main())
    assert events == ["confirmed", "cancelled"]


def test_late_reply_to_an_earlier_attempt_does_not_replace_the_current_one(
    store_url: str,
) -> None:
    """The store keeps the reply of the latest attempt, whatever order replies arrive in."""

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            await store.put_reply("s-1", "pay", 2, b'{"ok": true}')
            await store.put_reply("s-1", "pay", 1, b'{"ok": false, "error": "late"}')
            assert await store.get_reply("s-1", "pay") == (2, b'{"ok": true}')
            await store.put_reply("s-1", "pay", 3, b'{"ok": false}')
            assert await store.get_reply("s-1", "pay") == (3, b'{"ok": false}')

    run(main())
