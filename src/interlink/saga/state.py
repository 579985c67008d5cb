"""The saga state machine: given a saga's state and what just happened, the next state and the
next thing to do. Pure: no I/O, no clock, no asyncio; time arrives inside the events.

The orchestrator runs a loop around ``decide``: persist the returned state, then carry out the
returned command (run an action, run a compensation, wait, stop), turn the outcome into an event,
and ask again. Because the state is saved *before* the command runs, a crash at any point leaves
a state from which ``decide(state, Wake(...))`` picks up: an attempt that was in flight when the
process died is run again (same idempotency key), never silently skipped.

Life of a saga::

    RUNNING ──every step succeeded──────────────────────────────▶ COMPLETED
       │ a step gave up (its Retry said no), or the saga timed out
       ▼
    COMPENSATING ──every started step compensated, in reverse──▶ COMPENSATED
       │ a compensation gave up (its Retry said no), an attempt was interrupted too often,
       │ or the input is bad (corrupt row, payload or reply that no longer validates)
       ▼
    NEEDS_ATTENTION ──resume (by hand)──▶ back to RUNNING or COMPENSATING

When to retry is not decided here: the orchestrator asks the step's ``interlink.Retry`` and
passes the answer in (``retry_in`` seconds, or None to give up), so the backoff formulas live
in one place in the whole code base.

This module is the machine's front door (``new_state``, ``decide``, ``resume``) and re-exports
its vocabulary; the parts live in private modules: the records in ``_state_records``, the events
in ``_state_events``, the commands in ``_state_commands``, applying an event in ``_state_apply``
and choosing the next command in ``_state_next``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from interlink.saga._state_apply import apply_event, check_deadline
from interlink.saga._state_commands import (
    Command,
    Decision,
    RunAction,
    RunCompensation,
    Sleep,
    Stop,
    idempotency_key,
)
from interlink.saga._state_events import (
    ActionFailed,
    ActionSucceeded,
    CompensationFailed,
    CompensationSucceeded,
    Event,
    Park,
    Wake,
)
from interlink.saga._state_next import next_decision
from interlink.saga._state_records import (
    ACTIVE,
    TERMINAL,
    SagaShape,
    SagaState,
    SagaStatus,
    StepShape,
    StepState,
    StepStatus,
)

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "ActionFailed",
    "ActionSucceeded",
    "Command",
    "CompensationFailed",
    "CompensationSucceeded",
    "Decision",
    "Event",
    "Park",
    "RunAction",
    "RunCompensation",
    "SagaShape",
    "SagaState",
    "SagaStatus",
    "Sleep",
    "StepShape",
    "StepState",
    "StepStatus",
    "Stop",
    "Wake",
    "decide",
    "idempotency_key",
    "new_state",
    "resume",
]


def new_state(
    saga_id: str,
    name: str,
    shape: SagaShape,
    data: Any,
    *,
    at: float,
    timeout: float | None = None,
) -> SagaState:
    """A saga that has not run anything yet."""
    return SagaState(
        saga_id=saga_id,
        name=name,
        status=SagaStatus.RUNNING,
        data=data,
        steps=tuple(StepState(name=s.name) for s in shape.steps),
        created_at=at,
        updated_at=at,
        deadline_at=None if timeout is None else at + timeout,
    )


def decide(state: SagaState, event: Event, shape: SagaShape) -> Decision:
    """Apply ``event`` to ``state`` and pick the next command.

    Raises ``ValueError`` when the event does not fit the state (a result for a step that has no
    attempt in flight): a bug in the driver, never something to paper over.
    """
    if len(shape.steps) != len(state.steps) or any(
        a.name != b.name for a, b in zip(shape.steps, state.steps, strict=True)
    ):
        names = [s.name for s in state.steps]
        event = Park(event.at, f"the saga's steps {names} no longer match its definition")
    state = apply_event(state, event, shape)
    state = check_deadline(state, event.at)
    return next_decision(state, event.at, shape)


def resume(state: SagaState, at: float) -> SagaState:
    """A parked saga made ready to run again (by hand, after someone fixed the cause).

    The current phase's failure count starts over, so its Retry schedule does too; a saga that
    is active but waiting for a backoff just stops waiting. Terminal sagas cannot be resumed.
    """
    if state.status in TERMINAL:
        raise ValueError(f"saga {state.saga_id!r} is {state.status}; there is nothing to resume")
    steps = tuple(
        replace(s, failures=0, interruptions=0, next_at=None)
        if s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.FAILED)
        else s
        for s in state.steps
    )
    status = state.status
    if status is SagaStatus.NEEDS_ATTENTION:
        status = state.parked_from or SagaStatus.RUNNING
    return replace(state, status=status, steps=steps, parked_from=None, updated_at=at)
