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

Reading order: the records (statuses, the definition's shape, the saga's and its steps'
progress), the events fed in, the commands answered with, then ``decide`` in its two halves:
applying an event (``_apply``) and choosing what is due now (``_next``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

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
    "LateSuccess",
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


class SagaStatus(StrEnum):
    """Where a saga as a whole stands."""

    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"


ACTIVE = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})


class StepStatus(StrEnum):
    """Where one step stands. RUNNING and COMPENSATING cover both "an attempt is in flight"
    (``in_flight``) and "waiting to retry" (``next_at``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"


@dataclass(frozen=True, slots=True)
class StepShape:
    """What the machine needs to know about a step of the definition."""

    name: str
    has_compensation: bool = True
    compensate_on_failure: bool = True


@dataclass(frozen=True, slots=True)
class SagaShape:
    """The definition, as the machine sees it: step names and compensation facts."""

    steps: tuple[StepShape, ...]
    max_interruptions: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class StepState:
    """One step's progress: attempts and failures of the current phase, last error, times."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0  # action attempts started, in all
    compensations: int = 0  # compensation attempts started, in all
    failures: int = 0  # failed attempts in the current phase since it began or was resumed
    interruptions: int = 0  # attempts cut short by a crash, since the last finished attempt
    in_flight: bool = False
    next_at: float | None = None
    last_delay: float = 0.0
    error: str | None = None
    result: Any = None
    started_at: float | None = None
    finished_at: float | None = None
    compensated_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaState:
    """A saga instance: its input, its steps' progress, and why it stands where it does."""

    saga_id: str
    name: str
    status: SagaStatus
    data: Any
    steps: tuple[StepState, ...]
    created_at: float
    updated_at: float
    deadline_at: float | None = None
    error: str | None = None
    parked_from: SagaStatus | None = None
    version: int = 0
    #: the saga's root span as W3C trace headers (``interlink.saga._trace``): opaque here
    trace: Mapping[str, str] | None = None

    def step(self, name: str) -> StepState:
        """The state of the step called ``name``."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def results(self) -> dict[str, Any]:
        """Results of the steps that succeeded, by step name."""
        return {s.name: s.result for s in self.steps if s.result is not None}


def _with_step(state: SagaState, index: int, step: StepState, at: float) -> SagaState:
    steps = (*state.steps[:index], step, *state.steps[index + 1 :])
    return replace(state, steps=steps, updated_at=at)


@dataclass(frozen=True, slots=True)
class Wake:
    """The saga is (re)entered: claimed after a start or a crash, or a backoff wait ended."""

    at: float


@dataclass(frozen=True, slots=True)
class _AttemptEnded:
    index: int  # the step's place in the definition
    at: float


@dataclass(frozen=True, slots=True)
class _AttemptFailed(_AttemptEnded):
    error: str
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class ActionSucceeded(_AttemptEnded):
    """Step ``index``'s action returned ``result``."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class ActionFailed(_AttemptFailed):
    """Step ``index``'s action failed; retry after ``retry_in`` seconds, or give up (None)."""


@dataclass(frozen=True, slots=True)
class CompensationSucceeded(_AttemptEnded):
    """Step ``index``'s compensation returned."""


@dataclass(frozen=True, slots=True)
class CompensationFailed(_AttemptFailed):
    """Step ``index``'s compensation failed; retry after ``retry_in``, or park (None)."""


@dataclass(frozen=True, slots=True)
class Park:
    """Stop and wait for a human: the input is bad or the saga cannot go on by itself."""

    at: float
    error: str


@dataclass(frozen=True, slots=True)
class LateSuccess:
    """Steps ``indices`` reported success after the saga gave up on them (a reply that came
    after the attempt timed out, the step failed or was compensated): their effect may outlive
    the saga, so each is compensated again, or, if it cannot be undone, the saga is parked."""

    at: float
    indices: tuple[int, ...]


Event = (
    Wake
    | ActionSucceeded
    | ActionFailed
    | CompensationSucceeded
    | CompensationFailed
    | Park
    | LateSuccess
)


@dataclass(frozen=True, slots=True)
class _Run:
    index: int
    attempt: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RunAction(_Run):
    """Run attempt ``attempt`` of step ``index``'s action."""


@dataclass(frozen=True, slots=True)
class RunCompensation(_Run):
    """Run attempt ``attempt`` of step ``index``'s compensation."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Nothing is due before ``until`` (a retry backoff)."""

    until: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Nothing more to do by itself: the saga finished or is parked."""

    status: SagaStatus


Command = RunAction | RunCompensation | Sleep | Stop


@dataclass(frozen=True, slots=True)
class Decision:
    """The state to persist, then the command to carry out."""

    state: SagaState
    command: Command


def idempotency_key(saga_id: str, step: str, *, compensation: bool = False) -> str:
    """The key a step's effects are deduplicated by: the same on every attempt and after a crash."""
    return f"{saga_id}:{step}:compensation" if compensation else f"{saga_id}:{step}"


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


def _phase_over(step: StepState, **changes: Any) -> StepState:
    """The step's phase (its action, or its compensation) ended with the attempt that was in
    flight: the phase's failure and interruption counts start over, no retry is pending."""
    return replace(step, in_flight=False, failures=0, interruptions=0, next_at=None, **changes)


def _apply(state: SagaState, event: Event, shape: SagaShape) -> SagaState:
    at = event.at
    if isinstance(event, Wake):
        return _recover(state, at, shape)
    if isinstance(event, Park):
        return _park(state, event.error, at)
    if isinstance(event, LateSuccess):  # the saga is (re)entered, as with Wake, then the news
        return _late(_recover(state, at, shape), event, shape)
    if isinstance(event, ActionSucceeded):
        step = _in_flight(state, event.index, StepStatus.RUNNING, "action result")
        step = _phase_over(
            step, status=StepStatus.SUCCEEDED, result=event.result, error=None, finished_at=at
        )
        return _with_step(state, event.index, step, at)
    if isinstance(event, ActionFailed):
        step = _in_flight(state, event.index, StepStatus.RUNNING, "action failure")
        failures = step.failures + 1
        timed_out = state.deadline_at is not None and at >= state.deadline_at
        if event.retry_in is not None and not timed_out:
            return _retry_later(state, event, failures)
        step = _phase_over(
            step, status=StepStatus.FAILED, error=event.error, last_delay=0.0, finished_at=at
        )
        state = _with_step(state, event.index, step, at)
        why = f"step {step.name!r} failed after {step.attempts} attempt(s): {event.error}"
        return _start_compensating(state, why, at)
    if isinstance(event, CompensationSucceeded):
        step = _in_flight(state, event.index, StepStatus.COMPENSATING, "compensation result")
        step = _phase_over(step, status=StepStatus.COMPENSATED, compensated_at=at)
        return _with_step(state, event.index, step, at)
    step = _in_flight(state, event.index, StepStatus.COMPENSATING, "compensation failure")
    failures = step.failures + 1
    if event.retry_in is not None:
        return _retry_later(state, event, failures)
    step = replace(step, in_flight=False, failures=failures, error=event.error, next_at=None)
    state = _with_step(state, event.index, step, at)
    why = f"compensation of step {step.name!r} failed {failures} time(s): {event.error}"
    return _park(state, why, at)


def _retry_later(state: SagaState, event: _AttemptFailed, failures: int) -> SagaState:
    """The failed attempt's step waits ``retry_in`` seconds before its next attempt."""
    delay = _delay(event.retry_in)
    step = replace(
        state.steps[event.index],
        in_flight=False,
        failures=failures,
        interruptions=0,
        error=event.error,
        next_at=event.at + delay,
        last_delay=delay,
    )
    return _with_step(state, event.index, step, event.at)


_GAVE_UP = frozenset({StepStatus.FAILED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def _late(state: SagaState, event: LateSuccess, shape: SagaShape) -> SagaState:
    """A late success marks its step SUCCEEDED again, so the backward pass undoes it (same
    idempotency key); a step nobody can undo parks the saga with the reason."""
    at, stuck = event.at, []
    for index in sorted(set(event.indices)):
        if not 0 <= index < len(state.steps):
            raise ValueError(f"late success for step {index}, but saga has {len(state.steps)}")
        step = state.steps[index]
        if step.in_flight or step.status not in _GAVE_UP:
            continue  # still running, or already known to have succeeded: nothing was late
        if step.status is StepStatus.COMPENSATING:
            continue  # its undo has not finished yet; it runs again after this success anyway
        if not shape.steps[index].has_compensation or (
            step.status is StepStatus.FAILED and not shape.steps[index].compensate_on_failure
        ):
            stuck.append(step.name)
            continue
        error = f"succeeded late, after the saga gave up on it ({step.status}): undoing it again"
        again = replace(step, status=StepStatus.SUCCEEDED, error=error, next_at=None)
        state = _with_step(state, index, again, at)
        if state.status is SagaStatus.COMPENSATED:
            state = replace(state, status=SagaStatus.COMPENSATING, updated_at=at)
    if stuck:
        why = (
            f"step(s) {stuck} succeeded after the saga gave up on them and cannot be undone "
            "(no compensation): their effect outlives the saga"
        )
        parked_from = state.parked_from if state.status is SagaStatus.NEEDS_ATTENTION else None
        return replace(
            state,
            status=SagaStatus.NEEDS_ATTENTION,
            parked_from=parked_from or state.status,
            error=why,
            updated_at=at,
        )
    return state


def _delay(value: object) -> float:
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
        state = _with_step(
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


def _check_deadline(state: SagaState, at: float) -> SagaState:
    if (
        state.status is SagaStatus.RUNNING
        and state.deadline_at is not None
        and at >= state.deadline_at
        and not any(s.in_flight for s in state.steps)
    ):
        return _start_compensating(state, "the saga timed out", at)
    return state


def _next(state: SagaState, at: float, shape: SagaShape) -> Decision:
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
        state = _with_step(state, index, step, at)
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
        state = _with_step(state, index, step, at)
        key = idempotency_key(state.saga_id, step.name, compensation=True)
        return Decision(state, RunCompensation(index, step.compensations, key))
    done = replace(state, status=SagaStatus.COMPENSATED, updated_at=at)
    return Decision(done, Stop(SagaStatus.COMPENSATED))


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
    state = _apply(state, event, shape)
    state = _check_deadline(state, event.at)
    return _next(state, event.at, shape)


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
