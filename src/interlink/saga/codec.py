"""The stored form of a saga state: one JSON object per row (the ``version`` has its own column).

Reading is strict: an unknown status, a missing field or a step field nobody knows raises
``CorruptSagaState`` naming the problem, so a damaged row is parked with a readable reason
instead of being driven on guesses.
"""

from __future__ import annotations

import json
from typing import Any

from interlink.saga.errors import CorruptSagaState
from interlink.saga.state import SagaState, SagaStatus, StepState, StepStatus

__all__ = ["state_from_json", "state_to_json"]

_STEP_FIELDS = frozenset(StepState.__dataclass_fields__)


def state_to_json(state: SagaState) -> str:
    """The stored form: one JSON object (the ``version`` lives in its own column)."""
    doc = {
        "saga_id": state.saga_id,
        "name": state.name,
        "status": state.status.value,
        "data": state.data,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "deadline_at": state.deadline_at,
        "error": state.error,
        "parked_from": None if state.parked_from is None else state.parked_from.value,
        "steps": [
            {
                name: (value.value if isinstance(value, StepStatus) else value)
                for name in sorted(_STEP_FIELDS)
                for value in (getattr(s, name),)
            }
            for s in state.steps
        ],
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def state_from_json(saga_id: str, text: str | bytes, version: int = 0) -> SagaState:
    """Read a stored state back; ``CorruptSagaState`` says what is wrong with it."""
    try:
        doc = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise CorruptSagaState(saga_id, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise CorruptSagaState(saga_id, f"expected a JSON object, got {type(doc).__name__}")
    try:
        steps = tuple(_step_from(raw) for raw in doc["steps"])
        parked = doc.get("parked_from")
        return SagaState(
            saga_id=str(doc["saga_id"]),
            name=str(doc["name"]),
            status=SagaStatus(doc["status"]),
            data=doc.get("data"),
            steps=steps,
            created_at=float(doc["created_at"]),
            updated_at=float(doc["updated_at"]),
            deadline_at=None if doc.get("deadline_at") is None else float(doc["deadline_at"]),
            error=doc.get("error"),
            parked_from=None if parked is None else SagaStatus(parked),
            version=version,
        )
    except KeyError as exc:
        raise CorruptSagaState(saga_id, f"missing field {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise CorruptSagaState(saga_id, str(exc)) from None


def _step_from(raw: Any) -> StepState:
    if not isinstance(raw, dict):
        raise TypeError(f"a step must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - _STEP_FIELDS
    if unknown:
        raise ValueError(f"unknown step field(s) {sorted(unknown)}")
    values = dict(raw)
    values["status"] = StepStatus(values.get("status", "PENDING"))
    return StepState(**values)
