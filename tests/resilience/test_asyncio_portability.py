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
        from interlink.resilience import _watchdog
        print("public" if _watchdog.task_of is asyncio.current_task else "fast")

    {runner}
    """
)


def _probe(
    setup: str = "", runner: str = "asyncio.run(main())", *, public: bool = False
) -> tuple[list[float], str]:
    """(seconds each call took, which current-task lookup the timeout ended up using)."""
    code = PROBE.format(setup=setup, runner=runner)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("INTERLINK_ASYNCIO_PUBLIC", None)
    if public:
        env["INTERLINK_ASYNCIO_PUBLIC"] = "1"
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
    took, lookup = out.stdout.strip().splitlines()
    return [float(s) for s in took.split()], lookup


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
    took, lookup = _probe(setup)
    _all_cut_early(took)
    assert lookup == "public"  # the fast path's check saw the empty map and let it go


def test_timeouts_fire_under_uvloop() -> None:
    """uvloop's loop has no ``_thread_id`` and its own clock: timeouts fire all the same."""
    pytest.importorskip("uvloop")
    took, _ = _probe(setup="import uvloop", runner="uvloop.run(main())")
    _all_cut_early(took)


@pytest.mark.parametrize("public", [False, True], ids=["as-available", "forced-public"])
def test_timeouts_fire_on_the_public_path_when_forced(public: bool) -> None:
    """``INTERLINK_ASYNCIO_PUBLIC=1`` keeps the timeout on ``asyncio.current_task`` (the path
    every CPython after 3.11 takes anyway), and timeouts fire either way."""
    took, lookup = _probe(public=public)
    _all_cut_early(took)
    if public or sys.version_info >= (3, 12):
        assert lookup == "public"


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
