"""The commands the saga state machine answers with: what the orchestrator does next, and the
idempotency key an attempt runs under.

Apart from the machine so that what a driver must carry out reads on its own, next to the
``Decision`` that pairs a command with the state to persist first.
"""

from __future__ import annotations

from dataclasses import dataclass

from interlink.saga._state_records import SagaState, SagaStatus

__all__ = [
    "Command",
    "Decision",
    "RunAction",
    "RunCompensation",
    "Sleep",
    "Stop",
    "idempotency_key",
]


@dataclass(frozen=True, slots=True)
class RunAction:
    """Run attempt ``attempt`` of step ``index``'s action."""

    index: int
    attempt: int
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RunCompensation:
    """Run attempt ``attempt`` of step ``index``'s compensation."""

    index: int
    attempt: int
    idempotency_key: str


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
