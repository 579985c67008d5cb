"""What the built-in SQL saga stores share: the columns of a row, in the order of ``SagaRow``'s
fields, and the values they are written with, in the order of the columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from interlink.saga.stores import SagaRow, SagaWrite

__all__ = ["COLUMNS", "INSERTED", "inserted_values", "row_of", "written_values"]

INSERTED = (
    "id, name, status, state, version, owner, lease_until, wake_at, created_at, updated_at, error"
)
COLUMNS = INSERTED + ", late"


def row_of(r: Sequence[Any]) -> SagaRow:
    """The row read as ``SELECT {COLUMNS}`` (SQLite may return an old state as bytes)."""
    state = r[3]
    return SagaRow(
        saga_id=str(r[0]),
        name=str(r[1]),
        status=str(r[2]),
        state=state if isinstance(state, str) else bytes(state).decode("utf-8", "replace"),
        version=int(r[4]),
        owner=None if r[5] is None else str(r[5]),
        lease_until=float(r[6]),
        wake_at=float(r[7]),
        created_at=float(r[8]),
        updated_at=float(r[9]),
        error=None if r[10] is None else str(r[10]),
        late=int(r[11]),
    )


def inserted_values(row: SagaRow, owner: str | None, lease_until: float) -> tuple[Any, ...]:
    """The values of ``INSERTED`` for a new row."""
    return (
        row.saga_id,
        row.name,
        row.status,
        row.state,
        row.version,
        owner,
        lease_until,
        row.wake_at,
        row.created_at,
        row.updated_at,
        row.error,
    )


def written_values(write: SagaWrite) -> tuple[Any, ...]:
    """The values of ``state, status, wake_at, updated_at, error`` a write sets."""
    return (write.state, write.status, write.wake_at, write.updated_at, write.error)
