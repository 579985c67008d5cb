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

from typing import ClassVar

from interlink.errors import InterlinkError

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

    #: What ``str()`` says, filled in from the error's attributes; without one, the arguments.
    _template: ClassVar[str] = ""

    def __str__(self) -> str:
        return self._template.format_map(vars(self)) if self._template else super().__str__()


class SagaNotFound(SagaError, LookupError):
    """No saga with this id in the store."""

    _template = "no saga with id {saga_id!r} in this store"

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id


class CorruptSagaState(SagaError, ValueError):
    """A stored saga state cannot be read back (bad JSON, missing field, unknown status)."""

    _template = "stored state of saga {saga_id!r} is corrupt: {problem}"

    def __init__(self, saga_id: str, problem: str) -> None:
        super().__init__(saga_id, problem)
        self.saga_id, self.problem = saga_id, problem


class OwnershipLost(SagaError):
    """This orchestrator no longer owns the saga (its lease expired and another took it)."""

    _template = "saga {saga_id!r} is no longer owned by this orchestrator"

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id


class _StepError(SagaError):
    """What a step's remote side answered instead of a result: the step and its words."""

    def __init__(self, step: str, error: str) -> None:
        super().__init__(step, error)
        self.step, self.error = step, error


class StepFailed(_StepError):
    """A refusal: the remote side answered a command with ``{"ok": false, "error": ...}``, or
    a local step raised it ("card declined"). The step fails at once, never retried, and the
    saga compensates."""

    _template = "step {step!r} was refused: {error}"


class StepUnavailable(_StepError, ConnectionError):
    """The remote side answered ``{"ok": false, "retryable": true, ...}``: it could not do the
    work now (its database is down, say). Retried like a lost connection."""

    _template = "step {step!r} is unavailable for now: {error}"


class InvalidReply(SagaError, ValueError):
    """A reply that cannot be understood or does not validate: the saga is parked."""

    _template = "reply to step {step!r} is invalid: {problem}"

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(step, problem)
        self.step, self.problem = step, problem
