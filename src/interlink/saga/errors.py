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


class SagaNotFound(SagaError, LookupError):
    """No saga with this id in the store."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id

    def __str__(self) -> str:
        return f"no saga with id {self.saga_id!r} in this store"


class CorruptSagaState(SagaError, ValueError):
    """A stored saga state cannot be read back (bad JSON, missing field, unknown status)."""

    def __init__(self, saga_id: str, problem: str) -> None:
        super().__init__(saga_id, problem)
        self.saga_id = saga_id
        self.problem = problem

    def __str__(self) -> str:
        return f"stored state of saga {self.saga_id!r} is corrupt: {self.problem}"


class OwnershipLost(SagaError):
    """This orchestrator no longer owns the saga (its lease expired and another took it)."""

    def __init__(self, saga_id: str) -> None:
        super().__init__(saga_id)
        self.saga_id = saga_id

    def __str__(self) -> str:
        return f"saga {self.saga_id!r} is no longer owned by this orchestrator"


class StepFailed(SagaError):
    """A refusal: the remote side answered a command with ``{"ok": false, "error": ...}``, or
    a local step raised it ("card declined"). The step fails at once, never retried, and the
    saga compensates."""

    def __init__(self, step: str, error: str) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error

    def __str__(self) -> str:
        return f"step {self.step!r} was refused: {self.error}"


class StepUnavailable(SagaError, ConnectionError):
    """The remote side answered ``{"ok": false, "retryable": true, ...}``: it could not do the
    work now (its database is down, say). Retried like a lost connection."""

    def __init__(self, step: str, error: str) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error

    def __str__(self) -> str:
        return f"step {self.step!r} is unavailable for now: {self.error}"


class InvalidReply(SagaError, ValueError):
    """A reply that cannot be understood or does not validate: the saga is parked."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(step, problem)
        self.step = step
        self.problem = problem

    def __str__(self) -> str:
        return f"reply to step {self.step!r} is invalid: {self.problem}"
