"""``interlink saga list|show|resume``: look at durable sagas and resume parked ones by hand.

The store is named by URL (``--store``, or ``INTERLINK_SAGA_STORE``), the same URL the
orchestrators use: ``sqlite:///sagas.db`` or ``postgresql://user@host/db``. Store drivers are
imported inside the commands, so ``interlink --help`` needs none of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from interlink._url_options import SAGA_STORE
from interlink.cli._console import fail, run_or_fail, stdout
from interlink.cli._options import group

if TYPE_CHECKING:
    from interlink.saga import SagaState, SagaStore
    from interlink.saga.stores import SagaRow

__all__ = ["app"]

T = TypeVar("T")

app = group("Inspect durable sagas, and resume the ones parked in NEEDS_ATTENTION.")

StoreUrl = Annotated[str, SAGA_STORE]
TableName = Annotated[
    str, typer.Option("--table", help="The store's table (as given to the orchestrator).")
]
SagaId = Annotated[str, typer.Argument(help="The saga's id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

_STATUS_STYLE = {
    "RUNNING": "cyan",
    "COMPENSATING": "yellow",
    "COMPLETED": "green",
    "COMPENSATED": "blue",
    "NEEDS_ATTENTION": "bold red",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "PENDING": "dim",
}


def _with_store(url: str, table: str, action: Callable[[SagaStore], Awaitable[T]]) -> T:
    from interlink.saga import SagaError, SagaStore

    async def run() -> T:
        store = SagaStore.from_url(url, table=table)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return run_or_fail(run(), (SagaError, ValueError, ImportError, OSError))


def _when(seconds: float | None, day: float | None = None) -> str:
    """UTC time to the millisecond; only the time of day when it falls on ``day``'s date (the
    saga's creation, printed in full above the table), so step tables fit a terminal."""
    if seconds is None:
        return "-"
    at = datetime.fromtimestamp(seconds, UTC)
    if day is not None and at.date() == datetime.fromtimestamp(day, UTC).date():
        return at.strftime("%H:%M:%S.") + f"{at.microsecond // 1000:03d}"
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _ago(seconds: float, now: float) -> str:
    """How long ago, in the largest whole unit: what an operator scanning a list wants."""
    age = max(now - seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{int(age // size)}{unit} ago"
    return f"{int(age)}s ago"


def _styled(status: str) -> str:
    style = _STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


@app.command("list")
def list_sagas(
    store: StoreUrl,
    status: Annotated[
        list[str] | None,
        typer.Option("--status", help="Only sagas in this status (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many.")] = 50,
    table: TableName = "interlink_sagas",
    as_json: AsJson = False,
) -> None:
    """List sagas, most recently updated first, with their status and current step."""
    from interlink.saga import CorruptSagaState, SagaStatus
    from interlink.saga.admin import current_step
    from interlink.saga.codec import state_from_json

    wanted = {s.upper() for s in status} if status else None
    known = [s.value for s in SagaStatus]
    unknown = sorted((wanted or set()) - set(known))
    if unknown:
        raise fail(f"'--status' must be one of {', '.join(known)}: {', '.join(unknown)}")
    rows: list[SagaRow] = _with_store(store, table, lambda s: s.list(statuses=wanted, limit=limit))
    current: dict[str, str] = {}
    for row in rows:
        try:
            current[row.saga_id] = current_step(
                state_from_json(row.saga_id, row.state, row.version)
            )
        except CorruptSagaState:
            current[row.saga_id] = "?"
    if as_json:
        items = [
            {
                "id": row.saga_id,
                "saga": row.name,
                "status": row.status,
                "step": current[row.saga_id],
                "owner": row.owner,
                "updated_at": datetime.fromtimestamp(row.updated_at, UTC).isoformat(
                    timespec="milliseconds"
                ),
                "error": row.error,
            }
            for row in rows
        ]
        stdout().print_json(json.dumps(items))
        return
    out = Table(title=f"sagas ({len(rows)})")
    for column in ("id", "saga", "status", "step", "owner", "updated"):
        # ids are copied into `show`/`resume`: never split one; statuses stay whole
        out.add_column(column, no_wrap=column in ("id", "status", "updated"), overflow="fold")
    out.add_column("error", overflow="fold", ratio=1)
    now = time.time()
    for row in rows:
        out.add_row(
            row.saga_id,
            row.name,
            _styled(row.status),
            current[row.saga_id],
            row.owner or "-",
            _ago(row.updated_at, now),
            row.error or "",
        )
    stdout().print(out)


def _steps_table(state: SagaState) -> Table:
    out = Table(title="steps")
    out.add_column("#", no_wrap=True, justify="right", min_width=1)
    out.add_column("step", no_wrap=True)
    out.add_column("state", no_wrap=True)
    out.add_column("attempts", no_wrap=True, justify="right")
    out.add_column("undos", no_wrap=True, justify="right")
    out.add_column("last error", overflow="fold", ratio=1)
    out.add_column("times (UTC)", no_wrap=True)
    day = state.created_at
    for index, step in enumerate(state.steps, 1):
        status = step.status.value + (" (in flight)" if step.in_flight else "")
        times = [
            f"{label} {_when(at, day)}"
            for label, at in (
                ("started", step.started_at),
                ("finished", step.finished_at),
                ("undone", step.compensated_at),
                ("next try", step.next_at),
            )
            if at is not None
        ]
        out.add_row(
            str(index),
            step.name,
            _styled(status),
            str(step.attempts),
            str(step.compensations),
            step.error or "",
            "\n".join(times) or "-",
        )
    return out


@app.command("show")
def show(
    saga_id: SagaId, store: StoreUrl, table: TableName = "interlink_sagas", as_json: AsJson = False
) -> None:
    """Show one saga: status, error, and each step's state, attempts, errors and times."""
    from interlink.saga import CorruptSagaState, SagaNotFound
    from interlink.saga.admin import saga_json
    from interlink.saga.codec import state_from_json

    row = _with_store(store, table, lambda s: s.get(saga_id))
    if row is None:
        raise fail(str(SagaNotFound(saga_id)))
    try:
        state = state_from_json(row.saga_id, row.state, row.version)
    except CorruptSagaState as exc:
        out = stdout()
        out.print(f"saga [bold]{row.saga_id}[/] ({row.name}): {_styled(row.status)}")
        out.print(f"error: {row.error or '-'}", markup=False)
        out.print(f"stored state (first 500 characters): {row.state[:500]}", markup=False)
        raise fail(f"{exc}; fix or delete the row, then resume it") from exc
    if as_json:
        stdout().print_json(json.dumps(saga_json(state, row)))
        return
    out = stdout()
    parked = ""
    if state.status.value == "NEEDS_ATTENTION" and state.parked_from is not None:
        parked = f" (parked while {state.parked_from.value})"
    out.print(
        f"saga [bold]{state.saga_id}[/] ({state.name}): {_styled(state.status.value)}{parked}"
    )
    if state.error:
        out.print(f"error: {state.error}", markup=False)
    day = state.created_at
    owner = "-"
    if row.owner:
        owner = f"{row.owner} (lease until {_when(row.lease_until, day)})"
    out.print(
        f"created {_when(state.created_at)}, updated {_when(state.updated_at, day)}, "
        f"deadline {_when(state.deadline_at, day)}, owner {owner}",
        markup=False,
    )
    out.print(_steps_table(state))
    if state.status.value == "NEEDS_ATTENTION":
        out.print(
            f"fix the cause, then: interlink saga resume {state.saga_id} --store <URL>",
            markup=False,
        )


@app.command("resume")
def resume(saga_id: SagaId, store: StoreUrl, table: TableName = "interlink_sagas") -> None:
    """Resume a parked saga (or cut a backoff short): an orchestrator picks it up next."""
    from interlink.saga.admin import resume_saga

    state = _with_store(store, table, lambda s: resume_saga(s, saga_id))
    stdout().print(
        f"saga [bold]{state.saga_id}[/] resumed: {_styled(state.status.value)}; "
        "the next orchestrator that polls the store drives it on"
    )
