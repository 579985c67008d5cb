"""The stored form of a saga state: one JSON object per row (the ``version`` has its own column).

Reading is strict: an unknown status, a missing field or a step field nobody knows raises
``CorruptSagaState`` naming the problem, so a damaged row is parked with a readable reason
instead of being driven on guesses.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar, get_args, get_type_hints

from interlink.saga.errors import CorruptSagaState
from interlink.saga.state import SagaState, SagaStatus, StepState, StepStatus

__all__ = ["state_from_json", "state_to_json"]

_STEP_FIELDS = frozenset(StepState.__dataclass_fields__)
_STEP_ORDER = tuple(sorted(_STEP_FIELDS))
T = TypeVar("T")


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
        "trace": None if state.trace is None else dict(state.trace),
        # A StepStatus is a str: JSON writes its value.
        "steps": [{name: getattr(s, name) for name in _STEP_ORDER} for s in state.steps],
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
        raw_steps = doc["steps"]
        if not isinstance(raw_steps, list):
            raise TypeError(f"'steps' must be a list, got {type(raw_steps).__name__}")
        steps = tuple(_step_from(i, raw) for i, raw in enumerate(raw_steps))
        parked = _typed(doc, "parked_from", str, optional=True)
        return SagaState(
            saga_id=_typed(doc, "saga_id", str),
            name=_typed(doc, "name", str),
            status=SagaStatus(_typed(doc, "status", str)),
            data=doc.get("data"),
            steps=steps,
            created_at=_number(doc, "created_at"),
            updated_at=_number(doc, "updated_at"),
            deadline_at=_number(doc, "deadline_at", optional=True),
            error=_typed(doc, "error", str, optional=True),
            parked_from=None if parked is None else SagaStatus(parked),
            version=version,
            trace=_trace(doc.get("trace")),
        )
    except KeyError as exc:
        raise CorruptSagaState(saga_id, f"missing field {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise CorruptSagaState(saga_id, str(exc)) from None


_MISSING = object()


def _trace(value: Any) -> dict[str, str] | None:
    # Trace headers are telemetry: a damaged value is dropped, never a reason to park a saga.
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    return None


def _typed(doc: dict[str, Any], name: str, kind: type[T], *, optional: bool = False) -> Any:
    """``doc[name]`` if it is a ``kind`` (None allowed when ``optional``), else TypeError
    naming the field, the type wanted and the value found."""
    value = doc.get(name, None if optional else _MISSING)
    if value is _MISSING:
        raise KeyError(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name!r} must be {kind.__name__}, got {value!r}")
    return value


def _number(doc: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = doc.get(name, None if optional else _MISSING)
    if value is _MISSING:
        raise KeyError(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name!r} must be a finite number, got {value!r}")
    return float(value)


def _stored_type(hint: Any) -> tuple[type, bool] | None:
    """(type, None allowed) a stored step field must have, from its annotation on
    ``StepState``: a status is stored as its text; ``Any`` (the result) is not checked."""
    args = get_args(hint)
    optional = type(None) in args
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if kind is Any:
        return None
    return (str if issubclass(kind, str) else kind), optional


# The type every stored step field must have, read once from ``StepState``'s annotations.
_STEP_TYPES: dict[str, tuple[type, bool]] = {
    name: stored
    for name, hint in get_type_hints(StepState).items()
    if (stored := _stored_type(hint)) is not None
}


def _step_from(index: int, raw: Any) -> StepState:
    if not isinstance(raw, dict):
        raise TypeError(f"step {index} must be a JSON object, got {type(raw).__name__}")
    unknown = set(raw) - _STEP_FIELDS
    if unknown:
        raise ValueError(f"unknown step field(s) {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name, stored in raw.items():
        value = stored
        if name in _STEP_TYPES:
            kind, optional = _STEP_TYPES[name]
            where = f"steps[{index}].{name}"
            if kind is float:
                value = _number({where: stored}, where, optional=optional)
            else:
                value = _typed({where: stored}, where, kind, optional=optional)
            if kind is int and value < 0:
                raise ValueError(f"{where!r} must be >= 0, got {value!r}")
        values[name] = value
    if "name" not in values:
        raise KeyError(f"steps[{index}].name")
    values["status"] = StepStatus(values.get("status", "PENDING"))
    return StepState(**values)
