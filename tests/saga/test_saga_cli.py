"""``interlink saga list|show|resume`` against a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from saga_helpers import Recorder, run
from typer.testing import CliRunner

from interlink import Retry
from interlink.cli.main import app
from interlink.saga import Orchestrator, SagaDefinition, SagaStatus, Step, store_from_url

FAST = Retry(attempts=0)


def populate(path: Path) -> dict[str, str]:
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
        store = store_from_url(f"sqlite:///{path}")
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
                version=row.version,
                state="[]",
                status="NEEDS_ATTENTION",
                wake_at=0.0,
                now=row.updated_at,
                error="parked by hand",
            )
            return {"parked": parked, "done": done}
        finally:
            await store.close()

    return run(main())


@pytest.fixture
def store(tmp_path: Path) -> str:
    populate(tmp_path / "sagas.db")
    return f"sqlite:///{tmp_path / 'sagas.db'}"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})
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
