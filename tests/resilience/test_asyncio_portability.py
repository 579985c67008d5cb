"""The async timeout uses public asyncio only: it fires on any loop and any CPython."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from interlink import CircuitBreaker, DeadlineExceeded, Pipeline, Retry, Timeout

SRC = Path(__file__).resolve().parents[2] / "src"

#: A 0.05 s timeout around asyncio.sleep(1), through a pipeline and alone, repeated so the
#: second call takes the task's deadline record installed by the first. Prints the seconds
#: each call took.
PROBE = textwrap.dedent(
    """
    import asyncio, sys, time
    {setup}
    from interlink import CircuitBreaker, DeadlineExceeded, Pipeline, Retry, Timeout

    async def main():
        p = Pipeline(timeout=Timeout(0.05), retry=Retry(2), breaker=CircuitBreaker("p"))
        t = Timeout(0.05)
        took = []
        for run in (p.acall, p.acall, t.acall, t.acall):
            start = time.perf_counter()
            try:
                await run(asyncio.sleep, 1)
            except DeadlineExceeded:
                took.append(time.perf_counter() - start)
            else:
                took.append(-1.0)
        print(" ".join(f"{{s:.3f}}" for s in took))

    {runner}
    """
)


def _probe(setup: str = "", runner: str = "asyncio.run(main())") -> list[float]:
    code = PROBE.format(setup=setup, runner=runner)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # nothing logged by the loop (an error in a timer callback)
    return [float(s) for s in out.stdout.split()]


def _all_cut_early(took: list[float]) -> None:
    # generous bounds for a busy machine: fired, and long before the 1 s sleep ended
    assert all(0.04 <= s < 0.6 for s in took), took


def test_timeouts_fire_when_asyncio_keeps_no_current_task_map() -> None:
    """CPython 3.14 keeps the current task in the thread state and leaves
    ``asyncio.tasks._current_tasks`` empty: emulated by emptying it, timeouts still fire."""
    setup = textwrap.dedent(
        """
        import asyncio, asyncio.tasks
        _kept = asyncio.tasks._current_tasks  # asyncio's own, now out of everybody's reach
        def current_task(loop=None):
            return _kept.get(asyncio.get_running_loop() if loop is None else loop)
        asyncio.current_task = asyncio.tasks.current_task = current_task
        asyncio.tasks._current_tasks = {}  # what 3.14 leaves there
        """
    )
    _all_cut_early(_probe(setup))


def test_timeouts_fire_under_uvloop() -> None:
    """uvloop's loop has no ``_thread_id`` and its own clock: timeouts fire all the same."""
    pytest.importorskip("uvloop")
    _all_cut_early(_probe(setup="import uvloop", runner="uvloop.run(main())"))


def test_under_uvloop_a_task_reuses_its_deadline_record() -> None:
    """Under uvloop the task's deadline record is installed once and then reused, not rebuilt
    on every call (the per-call path arms a watchdog entry per call)."""
    uvloop = pytest.importorskip("uvloop")
    from interlink.resilience import timeout as timeout_module

    installed: list[object] = []
    real = timeout_module.enter_task_deadline

    def counting(*args: Any) -> Any:
        frame = real(*args)
        installed.append(frame)
        return frame

    p = Pipeline(timeout=Timeout(5.0), retry=Retry(1), breaker=CircuitBreaker("u"))

    async def ok() -> int:
        return 1

    async def main() -> int:
        return sum([await p.acall(ok) for _ in range(200)])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timeout_module, "enter_task_deadline", counting)
        assert uvloop.run(main()) == 200
    assert len(installed) == 1
    assert isinstance(installed[0], list)


@pytest.mark.parametrize(
    "run",
    [
        lambda p, t: p.acall,
        lambda p, t: t.acall,
    ],
    ids=["pipeline", "timeout"],
)
def test_timeout_fires_on_the_loop_under_test(
    run: Callable[[Pipeline, Timeout], Callable[..., Awaitable[Any]]],
) -> None:
    """On the loop this run uses (``INTERLINK_TEST_LOOP``), 0.05 s ends a 1 s sleep early."""
    p = Pipeline(timeout=Timeout(0.05), breaker=CircuitBreaker("l"))
    t = Timeout(0.05)

    async def main() -> float:
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await run(p, t)(asyncio.sleep, 1)
        return time.perf_counter() - start

    assert 0.04 <= asyncio.run(main()) < 0.6
