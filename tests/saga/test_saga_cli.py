"""``interlink saga list|show|resume`` against a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from saga_helpers import PG_URL, Recorder, run, unique_table
from typer.testing import CliRunner

from interlink import Retry
from interlink.cli.main import app
from interlink.saga import Orchestrator, SagaDefinition, SagaStatus, SagaStore, Step
from interlink.saga.stores import SagaWrite

FAST = Retry(retries=0)


def populate(url: str, table: str) -> dict[str, str]:
    """One completed saga, one parked (broken compensation), one corrupt row."""
    rec = Recorder()
    rec.fail["pay"] = -1
    rec.fail["comp:pay"] = -1
    definition = SagaDefinition(
        "order",
        [
            Step("create", rec.action("create"), rec.compensation("create")),
            Step(
                "pay",
                rec.action("pay"),
                rec.compensation("pay"),
                retry=FAST,
                compensation_retry=FAST,
            ),
        ],
    )
    ok = SagaDefinition("ok", [Step("only", rec.action("only"))])

    async def main() -> dict[str, str]:
        store = SagaStore.from_url(url, table=table)
        await store.open()
        try:
            async with Orchestrator(store, [definition, ok], poll_interval=0.05) as orch:
                parked = await orch.start("order", {"n": 1}, saga_id="parked-1")
                done = await orch.start("ok", {}, saga_id="done-1")
                assert (await orch.wait(parked)).status is SagaStatus.NEEDS_ATTENTION
                assert (await orch.wait(done)).status is SagaStatus.COMPLETED
            creator = Orchestrator(store, [ok])
            await creator.start("ok", {}, saga_id="corrupt-1")
            row = await store.get("corrupt-1")
            assert row is not None
            await store.put_unowned(
                "corrupt-1",
                SagaWrite(
                    state="[]",
                    status="NEEDS_ATTENTION",
                    wake_at=0.0,
                    updated_at=row.updated_at,
                    error="parked by hand",
                ),
                version=row.version,
            )
            return {"parked": parked, "done": done}
        finally:
            await store.close()

    return run(main())


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A populated store on each backend, as the ``--store``/``--table`` arguments."""
    table = unique_table()
    url = f"sqlite:///{tmp_path / 'sagas.db'}" if request.param == "sqlite" else PG_URL
    populate(url, table)
    yield f"{url} {table}"
    if request.param == "postgres":

        async def drop() -> None:
            pg = SagaStore.from_url(url, table=table)
            await pg.open()
            await pg.drop()
            await pg.close()

        run(drop())


def invoke(*args: str, columns: int = 250) -> tuple[int, str]:
    """Run the CLI; a ``store`` argument expands to ``--store URL --table NAME``."""
    argv: list[str] = []
    for arg in args:
        if arg.startswith(("sqlite:", "postgresql:")):
            url, table = arg.split(" ")
            argv += [url, "--table", table]
        else:
            argv.append(arg)
    env = {"COLUMNS": str(columns), "NO_COLOR": "1"}
    result = CliRunner().invoke(app, argv, env=env)
    return result.exit_code, result.output


def test_list_shows_every_saga_with_status(store: str) -> None:
    """list prints one row per saga with its status and error."""
    code, out = invoke("saga", "list", "--store", store)
    assert code == 0
    for expected in ("parked-1", "NEEDS_ATTENTION", "done-1", "COMPLETED", "corrupt-1"):
        assert expected in out


def test_list_filters_by_status_as_json(store: str) -> None:
    """--status narrows the list; --json prints machine-readable rows."""
    code, out = invoke("saga", "list", "--store", store, "--status", "completed", "--json")
    assert code == 0
    assert [row["id"] for row in json.loads(out)] == ["done-1"]


def test_show_prints_each_steps_state_attempts_and_errors(store: str) -> None:
    """show has a row per step with state, attempts, compensations and the last error."""
    code, out = invoke("saga", "show", "parked-1", "--store", store)
    assert code == 0
    assert "NEEDS_ATTENTION" in out
    assert "compensation of step 'pay' failed 1 time(s)" in out
    pay = next(line for line in out.splitlines() if "│ pay" in line)
    assert "COMPENSATING" in pay
    assert "RuntimeError: comp:pay failed" in pay


def test_show_json_has_the_steps(store: str) -> None:
    """show --json gives the steps with their counters."""
    code, out = invoke("saga", "show", "parked-1", "--store", store, "--json")
    assert code == 0
    doc = json.loads(out)
    assert [(s["step"], s["attempts"], s["compensations"]) for s in doc["steps"]] == [
        ("create", 1, 0),
        ("pay", 1, 1),
    ]


def test_show_unknown_id_fails_clearly(store: str) -> None:
    """An unknown id exits 1 and says which id."""
    code, out = invoke("saga", "show", "nope", "--store", store)
    assert code == 1
    assert "no saga with id 'nope' in this store" in out


def test_show_corrupt_row_says_what_is_wrong(store: str) -> None:
    """A corrupt row shows what is known and why it cannot be read."""
    code, out = invoke("saga", "show", "corrupt-1", "--store", store)
    assert code == 1
    assert "parked by hand" in out
    assert "stored state of saga 'corrupt-1' is corrupt: expected a JSON object, got list" in out


def test_resume_makes_a_parked_saga_due_again(store: str) -> None:
    """resume moves a parked saga back to where it was parked."""
    code, out = invoke("saga", "resume", "parked-1", "--store", store)
    assert code == 0
    assert "COMPENSATING" in out
    code, out = invoke("saga", "list", "--store", store, "--status", "COMPENSATING", "--json")
    assert [row["id"] for row in json.loads(out)] == ["parked-1"]


def test_resume_refuses_a_finished_saga(store: str) -> None:
    """Resuming a completed saga fails with the reason."""
    code, out = invoke("saga", "resume", "done-1", "--store", store)
    assert code == 1
    assert "is COMPLETED; there is nothing to resume" in out


def test_show_parked_saga_says_where_it_stopped_and_how_to_resume(store: str) -> None:
    """A parked saga names the phase it was parked in and the command that resumes it."""
    code, out = invoke("saga", "show", "parked-1", "--store", store)
    assert code == 0
    assert "NEEDS_ATTENTION (parked while COMPENSATING)" in out
    assert "interlink saga resume parked-1 --store" in out


def test_tables_fit_a_narrow_terminal_without_splitting_names(store: str) -> None:
    """At 100 columns, ids, statuses and step names stay whole; the error wraps instead."""
    code, out = invoke("saga", "list", "--store", store, columns=100)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "│ parked-1 " in out
    assert " NEEDS_ATTENTION " in out
    code, out = invoke("saga", "show", "parked-1", "--store", store, columns=100)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 100
    assert " COMPENSATING " in out
    assert "│ create " in out
    assert "started " in out


def test_unknown_status_filter_is_refused(store: str) -> None:
    """--status with a value no saga can have fails and lists the valid ones."""
    code, out = invoke("saga", "list", "--store", store, "--status", "parked")
    assert code == 1
    assert "'--status' must be one of RUNNING, COMPENSATING" in out
    assert "PARKED" in out


def test_resume_by_hand_then_an_orchestrator_finishes_the_saga(store: str) -> None:
    """After `saga resume`, an orchestrator with the cause fixed drives the saga to its end."""
    url, table = store.split(" ")
    code, _ = invoke("saga", "resume", "parked-1", "--store", store)
    assert code == 0
    rec = Recorder()  # the compensations work now
    definition = SagaDefinition(
        "order",
        [
            Step("create", rec.action("create"), rec.compensation("create")),
            Step("pay", rec.action("pay"), rec.compensation("pay"), retry=FAST),
        ],
    )

    async def main() -> None:
        saga_store = SagaStore.from_url(url, table=table)
        try:
            async with Orchestrator(saga_store, [definition], poll_interval=0.05) as orch:
                state = await orch.wait("parked-1")
                assert state.status is SagaStatus.COMPENSATED
        finally:
            await saga_store.close()

    run(main())
    assert rec.phases() == [("compensation", "pay"), ("compensation", "create")]
