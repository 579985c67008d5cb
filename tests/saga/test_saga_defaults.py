"""Defaults that recover fast and say true things: refusals are final, transport errors are
retried, the compensation schedule is short to change."""

from __future__ import annotations

from typing import Any

from saga_helpers import opened, run, unique_table
from test_saga_send import payment_service

from interlink import Retry
from interlink.messaging import Broker, Envelope
from interlink.saga import (
    Orchestrator,
    SagaDefinition,
    SagaStatus,
    Send,
    Step,
    StepContext,
    StepFailed,
    reply_body,
)


def paying(**saga: Any) -> SagaDefinition:
    async def refund(ctx: StepContext) -> None:
        return None

    send = Send("payments.authorize", reply_topic="payments.replies", timeout=5.0)
    return SagaDefinition("order", [Step("pay", send, refund)], **saga)


def sent_commands(store_url: str, answer: Any) -> tuple[SagaStatus, int]:
    """Run one saga whose payment answers ``answer``; its end status and commands sent."""
    seen: list[dict[str, str]] = []

    async def main() -> SagaStatus:
        broker = Broker.from_url("memory://")
        payment_service(broker, answer, seen)
        async with opened(store_url, unique_table()) as store:
            orch = Orchestrator(store, [paying()], publisher=broker, poll_interval=0.05)
            orch.subscribe_replies(broker, "payments.replies")
            async with broker, orch:
                sid = await orch.start("order", {"total": 5})
                return (await orch.wait(sid, max_wait=20.0)).status

    return run(main(), 30.0), len(seen)


def test_a_refusal_reply_is_not_retried(store_url: str) -> None:
    """With the default step retry, "card declined" is sent once and the saga compensates."""
    status, sent = sent_commands(store_url, lambda env: reply_body(ok=False, error="declined"))
    assert (status, sent) == (SagaStatus.COMPENSATED, 1)


def test_a_retryable_reply_is_retried(store_url: str) -> None:
    """A reply marked retryable ("not now") is retried like a lost connection."""
    answers = iter([reply_body(ok=False, error="db down", retryable=True)])

    def answer(env: Envelope) -> bytes:
        return next(answers, reply_body(result={"payment_id": "p"}))

    status, sent = sent_commands(store_url, answer)
    assert (status, sent) == (SagaStatus.COMPLETED, 2)


def local_calls(store_url: str, error: Exception) -> int:
    calls: list[int] = []

    async def charge(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise error

    saga = SagaDefinition("order", [Step("charge", charge)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            Orchestrator(store, [saga], poll_interval=0.05) as orch,
        ):
            sid = await orch.start("order", {})
            assert (await orch.wait(sid, max_wait=20.0)).status is SagaStatus.COMPENSATED

    run(main(), 30.0)
    return len(calls)


def test_default_step_retry_covers_transport_errors_and_timeouts_only(store_url: str) -> None:
    """A ValueError or a StepFailed fails the step at once; a ConnectionError and a timeout
    are retried twice (STEP_RETRY: 3 calls)."""
    assert local_calls(store_url, ValueError("card declined")) == 1
    assert local_calls(store_url, StepFailed("charge", "card declined")) == 1
    assert local_calls(store_url, ConnectionError("reset")) == 3
    assert local_calls(store_url, TimeoutError()) == 3


def test_a_refusal_is_final_even_when_the_policy_retries_everything(store_url: str) -> None:
    """StepFailed is never retried, whatever the step's retry_on says."""
    calls: list[int] = []

    async def charge(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise StepFailed("charge", "card declined")

    everything = Retry(retries=3, backoff=0.001, max_backoff=0.01)
    saga = SagaDefinition("order", [Step("charge", charge, retry=everything)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            Orchestrator(store, [saga], poll_interval=0.05) as orch,
        ):
            sid = await orch.start("order", {})
            assert (await orch.wait(sid)).status is SagaStatus.COMPENSATED

    run(main())
    assert calls == [1]


def test_compensation_retry_is_shortened_per_saga(store_url: str) -> None:
    """SagaDefinition(compensation_retry=...) applies to every step without its own: a broken
    undo parks the saga after its 2 retries, in well under a second."""
    undos: list[int] = []

    async def ok(ctx: StepContext) -> None:
        return None

    async def broken_undo(ctx: StepContext) -> None:
        undos.append(ctx.attempt)
        raise ConnectionError("refund service down")

    async def decline(ctx: StepContext) -> None:
        raise StepFailed("pay", "declined")

    short = Retry(retries=2, backoff=0.01, max_backoff=0.02)
    saga = SagaDefinition(
        "order", [Step("reserve", ok, broken_undo), Step("pay", decline)], compensation_retry=short
    )

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            Orchestrator(store, [saga], poll_interval=0.05) as orch,
        ):
            sid = await orch.start("order", {})
            state = await orch.wait(sid, max_wait=10.0)
            assert state.status is SagaStatus.NEEDS_ATTENTION
            assert state.error is not None
            assert "compensation of step 'reserve' failed 3 time(s)" in state.error

    run(main())
    assert undos == [1, 2, 3]
