"""The errors the saga machinery raises on purpose, under ``InterlinkError``::

InterlinkError
└── SagaError
    ├── SagaNotFound        no saga with that id (also a LookupError)
    ├── CorruptSagaState    a stored state cannot be read back (also a ValueError)
    ├── OwnershipLost       another orchestrator took the saga over
    ├── StepFailed          a refusal: the step fails at once, never retried
    │   └── CommandRefused  a CommandGuard refused an expired or cancelled command
    ├── StepUnavailable     the remote side cannot do it now (also a ConnectionError): retried
    └── InvalidReply        a reply that does not parse or validate (also a ValueError)
"""

from __future__ import annotations

from dataclasses import dataclass

from interlink.errors import InterlinkError, _Fields

__all__ = [
    "CorruptSagaState",
    "InvalidReply",
    "OwnershipLost",
    "SagaError",
    "SagaNotFound",
    "StepFailed",
    "StepUnavailable",
]


class SagaError(InterlinkError):
    """Base class of the errors the saga machinery raises on purpose."""


@dataclass(eq=False, repr=False)
class SagaNotFound(SagaError, _Fields, LookupError):
    """No saga with this id in the store."""

    _template = "no saga with id {saga_id!r} in this store"
    saga_id: str


@dataclass(eq=False, repr=False)
class CorruptSagaState(SagaError, _Fields, ValueError):
    """A stored saga state cannot be read back (bad JSON, missing field, unknown status)."""

    _template = "stored state of saga {saga_id!r} is corrupt: {problem}"
    saga_id: str
    problem: str


@dataclass(eq=False, repr=False)
class OwnershipLost(SagaError, _Fields):
    """This orchestrator no longer owns the saga (its lease expired and another took it)."""

    _template = "saga {saga_id!r} is no longer owned by this orchestrator"
    saga_id: str


@dataclass(eq=False, repr=False)
class _StepError(SagaError, _Fields):
    """What a step's remote side answered instead of a result: the step and its words."""

    step: str
    error: str


class StepFailed(_StepError):
    """A refusal: the remote side answered a command with ``{"ok": false, "error": ...}``, or
    a local step raised it ("card declined"). The step fails at once, never retried, and the
    saga compensates."""

    _template = "step {step!r} was refused: {error}"


class StepUnavailable(_StepError, ConnectionError):
    """The remote side answered ``{"ok": false, "retryable": true, ...}``: it could not do the
    work now (its database is down, say). Retried like a lost connection."""

    _template = "step {step!r} is unavailable for now: {error}"


@dataclass(eq=False, repr=False)
class InvalidReply(SagaError, _Fields, ValueError):
    """A reply that cannot be understood or does not validate: the saga is parked."""

    _template = "reply to step {step!r} is invalid: {problem}"
    step: str
    problem: str
