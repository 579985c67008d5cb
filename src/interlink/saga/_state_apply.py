"""The first half of ``decide``: an event applied to a saga's state, and the saga's deadline
checked. Pure, like the rest of the machine.

Apart from the second half (``_state_next``, choosing the next command) because each reads as
one question: what does this event make of the saga, and what is due now.
"""

from __future__ import annotations

import math
from dataclasses import replace

from interlink.saga._state_events import (
    ActionFailed,
    ActionSucceeded,
    CompensationSucceeded,
    Event,
    Park,
    Wake,
)
from interlink.saga._state_records import (
    ACTIVE,
    TERMINAL,
    SagaShape,
    SagaState,
    SagaStatus,
    StepState,
    StepStatus,
    with_step,
)

__all__ = ["apply_event", "check_deadline"]


def _in_flight(state: SagaState, index: int, status: StepStatus, what: str) -> StepState:
    if not 0 <= index < len(state.steps):
        raise ValueError(f"{what} for step {index}, but saga has {len(state.steps)} steps")
    step = state.steps[index]
    if step.status is not status or not step.in_flight:
        raise ValueError(
            f"{what} for step {step.name!r}, which is {step.status} "
            f"({'in flight' if step.in_flight else 'idle'})"
        )
    return step


def _park(state: SagaState, error: str, at: float) -> SagaState:
    if state.status in TERMINAL or state.status is SagaStatus.NEEDS_ATTENTION:
        return replace(state, error=error, updated_at=at)
    return replace(
        state,
        status=SagaStatus.NEEDS_ATTENTION,
        parked_from=state.status,
        error=error,
        updated_at=at,
    )


def _start_compensating(state: SagaState, error: str, at: float) -> SagaState:
    return replace(state, status=SagaStatus.COMPENSATING, error=error, updated_at=at)


def apply_event(state: SagaState, event: Event, shape: SagaShape) -> SagaState:
    at = event.at
    if isinstance(event, Wake):
        return _recover(state, at, shape)
    if isinstance(event, Park):
        return _park(state, event.error, at)
    if isinstance(event, ActionSucceeded):
        step = _in_flight(state, event.index, StepStatus.RUNNING, "action result")
        step = replace(
            step,
            status=StepStatus.SUCCEEDED,
            in_flight=False,
            result=event.result,
            error=None,
            failures=0,
            interruptions=0,
            next_at=None,
            finished_at=at,
        )
        return with_step(state, event.index, step, at)
    if isinstance(event, ActionFailed):
        step = _in_flight(state, event.index, StepStatus.RUNNING, "action failure")
        failures = step.failures + 1
        timed_out = state.deadline_at is not None and at >= state.deadline_at
        if event.retry_in is not None and not timed_out:
            delay = _delay(event.retry_in)
            step = replace(
                step,
                in_flight=False,
                failures=failures,
                interruptions=0,
                error=event.error,
                next_at=at + delay,
                last_delay=delay,
            )
            return with_step(state, event.index, step, at)
        step = replace(
            step,
            status=StepStatus.FAILED,
            in_flight=False,
            failures=0,
            interruptions=0,
            error=event.error,
            next_at=None,
            last_delay=0.0,
            finished_at=at,
        )
        state = with_step(state, event.index, step, at)
        why = f"step {step.name!r} failed after {step.attempts} attempt(s): {event.error}"
        return _start_compensating(state, why, at)
    if isinstance(event, CompensationSucceeded):
        step = _in_flight(state, event.index, StepStatus.COMPENSATING, "compensation result")
        step = replace(
            step,
            status=StepStatus.COMPENSATED,
            in_flight=False,
            failures=0,
            interruptions=0,
            next_at=None,
            compensated_at=at,
        )
        return with_step(state, event.index, step, at)
    step = _in_flight(state, event.index, StepStatus.COMPENSATING, "compensation failure")
    failures = step.failures + 1
    if event.retry_in is not None:
        delay = _delay(event.retry_in)
        step = replace(
            step,
            in_flight=False,
            failures=failures,
            interruptions=0,
            error=event.error,
            next_at=at + delay,
            last_delay=delay,
        )
        return with_step(state, event.index, step, at)
    step = replace(step, in_flight=False, failures=failures, error=event.error, next_at=None)
    state = with_step(state, event.index, step, at)
    why = f"compensation of step {step.name!r} failed {failures} time(s): {event.error}"
    return _park(state, why, at)


def _delay(value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"'retry_in' must be a finite number >= 0: {value!r}")
    return float(value)


def _recover(state: SagaState, at: float, shape: SagaShape) -> SagaState:
    """An attempt still marked in flight was cut short by a crash: run it again, unless that
    keeps happening (the step may be what crashes the process)."""
    for index, was in enumerate(state.steps):
        if not was.in_flight:
            continue
        interruptions = was.interruptions + 1
        state = with_step(
            state, index, replace(was, in_flight=False, interruptions=interruptions), at
        )
        if interruptions > shape.max_interruptions and state.status in ACTIVE:
            what = "compensation" if was.status is StepStatus.COMPENSATING else "action"
            why = (
                f"the {what} of step {was.name!r} was interrupted {interruptions} times "
                "(did it crash the orchestrator?)"
            )
            state = _park(state, why, at)
    return state


def check_deadline(state: SagaState, at: float) -> SagaState:
    if (
        state.status is SagaStatus.RUNNING
        and state.deadline_at is not None
        and at >= state.deadline_at
        and not any(s.in_flight for s in state.steps)
    ):
        return _start_compensating(state, "the saga timed out", at)
    return state
