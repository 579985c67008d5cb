"""The second half of ``decide``: from a saga's state, the next command (run a step's action,
run a compensation in reverse order, sleep until a backoff ends, or stop). Pure.

Apart from the first half (``_state_apply``) because each reads as one question: what does an
event make of the saga, and what is due now.
"""

from __future__ import annotations

from dataclasses import replace

from interlink.saga._state_commands import (
    Decision,
    RunAction,
    RunCompensation,
    Sleep,
    Stop,
    idempotency_key,
)
from interlink.saga._state_records import (
    SagaShape,
    SagaState,
    SagaStatus,
    StepShape,
    StepState,
    StepStatus,
    with_step,
)

__all__ = ["next_decision"]


def next_decision(state: SagaState, at: float, shape: SagaShape) -> Decision:
    if state.status is SagaStatus.RUNNING:
        return _next_forward(state, at)
    if state.status is SagaStatus.COMPENSATING:
        return _next_backward(state, at, shape)
    return Decision(state, Stop(state.status))


def _next_forward(state: SagaState, at: float) -> Decision:
    for index, was in enumerate(state.steps):
        if was.status is StepStatus.SUCCEEDED:
            continue
        if was.in_flight:  # the driver asked again mid-attempt; let that attempt finish
            raise ValueError(f"step {was.name!r} already has an attempt in flight")
        if was.next_at is not None and was.next_at > at:
            return Decision(state, Sleep(was.next_at))
        step = replace(
            was,
            status=StepStatus.RUNNING,
            in_flight=True,
            attempts=was.attempts + 1,
            next_at=None,
            started_at=was.started_at if was.started_at is not None else at,
        )
        state = with_step(state, index, step, at)
        key = idempotency_key(state.saga_id, step.name)
        return Decision(state, RunAction(index, step.attempts, key))
    done = replace(state, status=SagaStatus.COMPLETED, error=None, updated_at=at)
    return Decision(done, Stop(SagaStatus.COMPLETED))


def _needs_compensation(step: StepState, shape: StepShape) -> bool:
    if not shape.has_compensation:
        return False
    if step.status in (StepStatus.SUCCEEDED, StepStatus.COMPENSATING):
        return True
    # A step that failed, or was abandoned mid-retry by a timeout, may have half happened
    # (a payment that timed out may still have gone through): undo it unless told it cannot.
    started = step.attempts > 0 and step.status in (StepStatus.FAILED, StepStatus.RUNNING)
    return started and shape.compensate_on_failure


def _next_backward(state: SagaState, at: float, shape: SagaShape) -> Decision:
    for index in range(len(state.steps) - 1, -1, -1):
        step = state.steps[index]
        if not _needs_compensation(step, shape.steps[index]):
            continue
        if step.in_flight:
            raise ValueError(f"step {step.name!r} already has an attempt in flight")
        if (
            step.status is StepStatus.COMPENSATING
            and step.next_at is not None
            and step.next_at > at
        ):
            return Decision(state, Sleep(step.next_at))
        if step.status is not StepStatus.COMPENSATING:  # a new phase: its own failure count
            step = replace(step, failures=0, interruptions=0, last_delay=0.0, next_at=None)
        step = replace(
            step,
            status=StepStatus.COMPENSATING,
            in_flight=True,
            compensations=step.compensations + 1,
            next_at=None,
        )
        state = with_step(state, index, step, at)
        key = idempotency_key(state.saga_id, step.name, compensation=True)
        return Decision(state, RunCompensation(index, step.compensations, key))
    done = replace(state, status=SagaStatus.COMPENSATED, updated_at=at)
    return Decision(done, Stop(SagaStatus.COMPENSATED))
