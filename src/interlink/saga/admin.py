"""Looking at sagas and resuming them by hand: what the CLI and the orchestrator share."""

from __future__ import annotations

import time
from typing import Any

from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.errors import SagaError, SagaNotFound
from interlink.saga.state import SagaState, resume
from interlink.saga.stores import SagaRow, SagaStore, SagaWrite

__all__ = ["count_by_status", "current_step", "load_saga", "resume_saga", "saga_json"]


async def load_saga(store: SagaStore, saga_id: str) -> SagaState:
    """The saga's state; ``SagaNotFound`` or ``CorruptSagaState`` when it cannot be had."""
    row = await store.get(saga_id)
    if row is None:
        raise SagaNotFound(saga_id)
    return state_from_json(row.saga_id, row.state, row.version)


async def resume_saga(store: SagaStore, saga_id: str, *, now: float | None = None) -> SagaState:
    """Make a parked (or backing-off) saga due again, for whichever orchestrator claims it next.

    The current step's failure count starts over (so does its Retry schedule). Refused for
    finished sagas, and while an orchestrator holds a live lease on the saga.
    """
    at = time.time() if now is None else now
    state = resume(await load_saga(store, saga_id), at)
    write = SagaWrite(
        state=state_to_json(state),
        status=state.status.value,
        wake_at=at,
        updated_at=at,
        error=state.error,
    )
    done = await store.put_unowned(saga_id, write, version=state.version)
    if not done:
        raise SagaError(
            f"saga {saga_id!r} is being driven by an orchestrator right now (or changed while "
            "resuming); try again once its lease has expired"
        )
    return state


def current_step(state: SagaState) -> str:
    """The step a saga is at (going forward or compensating), or "-" when none is."""
    where = state.parked_from if state.status.value == "NEEDS_ATTENTION" else state.status
    backwards = where is not None and where.value == "COMPENSATING"
    for step in reversed(state.steps) if backwards else state.steps:
        if step.status.value in ("RUNNING", "COMPENSATING", "FAILED"):
            return step.name
    return "-"


def saga_json(state: SagaState, row: SagaRow) -> dict[str, Any]:
    """A saga and its steps as JSON-ready data: what ``interlink saga show --json`` prints and
    what the dashboard draws a step timeline from."""
    return {
        "id": state.saga_id,
        "saga": state.name,
        "status": state.status.value,
        "step": current_step(state),
        "error": state.error,
        "owner": row.owner,
        "lease_until": row.lease_until or None,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "deadline_at": state.deadline_at,
        "data": state.data,
        "steps": [
            {
                "step": s.name,
                "state": s.status.value,
                "in_flight": s.in_flight,
                "attempts": s.attempts,
                "compensations": s.compensations,
                "error": s.error,
                "result": s.result,
                "started_at": s.started_at,
                "finished_at": s.finished_at,
                "compensated_at": s.compensated_at,
                "next_at": s.next_at,
            }
            for s in state.steps
        ],
    }


async def count_by_status(store: SagaStore, *, cap: int) -> dict[str, int]:
    """Sagas per status, each counted up to ``cap`` (a glance, not an audit): what the
    dashboard's summary and the ``interlink_sagas`` gauge show."""
    from interlink.saga.state import SagaStatus

    return {
        status.value: len(await store.list(statuses=[status.value], limit=cap))
        for status in SagaStatus
    }
