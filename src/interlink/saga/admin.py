"""Looking at sagas and resuming them by hand: what the CLI and the orchestrator share."""

from __future__ import annotations

import time

from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.errors import SagaError, SagaNotFound
from interlink.saga.state import SagaState, resume
from interlink.saga.stores import SagaStore

__all__ = ["load_saga", "resume_saga"]


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
    done = await store.put_unowned(
        saga_id,
        version=state.version,
        state=state_to_json(state),
        status=state.status.value,
        wake_at=at,
        now=at,
        error=state.error,
    )
    if not done:
        raise SagaError(
            f"saga {saga_id!r} is being driven by an orchestrator right now (or changed while "
            "resuming); try again once its lease has expired"
        )
    return state
