"""The default owner is stable: a restarted orchestrator resumes its own sagas at once, while
two live processes of one service never drive one saga; "lease lost" is logged only when it
happened."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import owner_worker
import pytest
from saga_helpers import opened, run, unique_table

from interlink import Retry
from interlink.saga import Orchestrator, SagaDefinition, SagaError, SagaStatus, Step, StepContext

WORKER = Path(owner_worker.__file__)


def lines(log: Path, kind: str, pid: int) -> list[list[str]]:
    if not log.exists():
        return []
    found = [line.split() for line in log.read_text().splitlines()]
    return [
        f for f in found if f and f[0] == kind and int(f[-1] if kind == "step" else f[2]) == pid
    ]


def wait_for(check: object, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_restarted_orchestrator_resumes_its_sagas_at_once(
    store_url: str, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    """kill -9 an orchestrator (default owner, 30 s lease) mid-attempt: its restart re-runs
    the 3 interrupted attempts within 2 s of opening; a second live process of the same
    service meanwhile runs none of them."""
    table, log = unique_table(), tmp_path / "log"
    env = {**os.environ, "OTEL_SERVICE_NAME": f"orders-{table}"}

    def spawn(*extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, str(WORKER), "--store", store_url, "--table", table]
        proc = subprocess.Popen([*cmd, "--log", str(log), *extra], env=env)
        workers.append(proc)
        return proc

    first = spawn("--start", "3")
    wait_for(lambda: len(lines(log, "step", first.pid)) == 3, 30)
    first.send_signal(signal.SIGKILL)
    first.wait()

    second = spawn()
    wait_for(lambda: len(lines(log, "step", second.pid)) == 3, 20)
    opened_at = float(lines(log, "open", second.pid)[0][1])
    resumed = [float(step[3]) - opened_at for step in lines(log, "step", second.pid)]
    assert max(resumed) < 2.0, resumed
    assert sorted(step[2] for step in lines(log, "step", second.pid)) == ["2", "2", "2"]

    third = spawn()  # same service, same host, while the second lives
    wait_for(lambda: lines(log, "open", third.pid), 20)
    assert lines(log, "open", third.pid)[0][3] != lines(log, "open", second.pid)[0][3]
    time.sleep(1.5)
    assert lines(log, "step", third.pid) == []

    async def check() -> None:
        async with opened(store_url, table) as store:
            rows = await store.list(statuses=None, limit=10)
            assert len(rows) == 3
            owner = lines(log, "open", second.pid)[0][3]
            assert all(row.owner == owner for row in rows)

    run(check())


def test_two_live_orchestrators_named_alike_refuse_to_share(store_url: str) -> None:
    """An explicit owner name a live orchestrator holds is refused; free again once it closed."""

    async def ok(ctx: StepContext) -> None:
        return None

    saga = SagaDefinition("s", [Step("a", ok)])

    async def main() -> None:
        async with opened(store_url, unique_table()) as store:
            async with Orchestrator(store, [saga], owner="node-1") as first:
                with pytest.raises(SagaError, match="'node-1' is held by another live"):
                    await Orchestrator(store, [saga], owner="node-1").open()
                assert first.owner.startswith("node-1#")
            async with Orchestrator(store, [saga], owner="node-1") as again:
                sid = await again.start("s", {})
                assert (await again.wait(sid)).status is SagaStatus.COMPLETED

    run(main())


def test_lease_lost_is_logged_only_when_it_happened(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone orchestrator whose sagas back off (letting their leases go) logs no "lease
    lost": nothing was."""
    tries: dict[str, int] = {}

    async def flaky(ctx: StepContext) -> None:
        tries[ctx.saga_id] = tries.get(ctx.saga_id, 0) + 1
        if tries[ctx.saga_id] < 3:
            raise ConnectionError("try again")

    backoff = Retry(retries=5, backoff=0.12, max_backoff=0.12, jitter="none")
    saga = SagaDefinition("s", [Step("a", flaky, retry=backoff)])

    async def main() -> None:
        async with (
            opened(store_url, unique_table()) as store,
            Orchestrator(store, [saga], lease=0.6, poll_interval=0.02, max_concurrent=200) as orch,
        ):
            ids = [await orch.start("s", {}) for _ in range(200)]
            for sid in ids:
                assert (await orch.wait(sid, max_wait=30)).status is SagaStatus.COMPLETED

    with caplog.at_level(logging.WARNING, logger="interlink.saga"):
        run(main(), 60.0)
    assert [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()] == []
