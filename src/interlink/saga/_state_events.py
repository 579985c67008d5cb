"""The events the saga state machine is fed: what just happened to a saga.

Apart from the machine so that the vocabulary between the orchestrator and ``decide`` reads on
its own; every event carries its time (``at``), which is how the machine stays clock-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ActionFailed",
    "ActionSucceeded",
    "CompensationFailed",
    "CompensationSucceeded",
    "Event",
    "Park",
    "Wake",
]


@dataclass(frozen=True, slots=True)
class Wake:
    """The saga is (re)entered: claimed after a start or a crash, or a backoff wait ended."""

    at: float


@dataclass(frozen=True, slots=True)
class ActionSucceeded:
    """Step ``index``'s action returned ``result``."""

    index: int
    at: float
    result: Any = None


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """Step ``index``'s action failed; retry after ``retry_in`` seconds, or give up (None)."""

    index: int
    at: float
    error: str
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class CompensationSucceeded:
    """Step ``index``'s compensation returned."""

    index: int
    at: float


@dataclass(frozen=True, slots=True)
class CompensationFailed:
    """Step ``index``'s compensation failed; retry after ``retry_in``, or park (None)."""

    index: int
    at: float
    error: str
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class Park:
    """Stop and wait for a human: the input is bad or the saga cannot go on by itself."""

    at: float
    error: str


Event = Wake | ActionSucceeded | ActionFailed | CompensationSucceeded | CompensationFailed | Park
