"""What the saga state machine reads and writes: the statuses, the definition's shape, and the
saga's and its steps' progress, as frozen records.

Apart from the machine (``state``) so that the records, which the codec, the stores and the
orchestrator also use, read on their own; ``with_step`` is here because both halves of the
machine replace a step the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "SagaShape",
    "SagaState",
    "SagaStatus",
    "StepShape",
    "StepState",
    "StepStatus",
    "with_step",
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


def with_step(state: SagaState, index: int, step: StepState, at: float) -> SagaState:
    steps = (*state.steps[:index], step, *state.steps[index + 1 :])
    return replace(state, steps=steps, updated_at=at)
