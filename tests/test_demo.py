"""``interlink demo``: the scripted scenario against a real loopback server, and its pieces.

The scenario runs once (``--fast``, about 4 s) and every phase test reads that one result; the
CLI test runs the installed script once more, as ``make demo`` does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random
from typing import TypeVar

import pytest

from interlink.demo import FAST, PHASES, DemoResult, run_scenario
from interlink.demo._caller import Answer, BadAnswer, request
from interlink.demo._downstream import Downstream
from interlink.demo._report import ms, summary
from interlink.demo._stats import percentile
from interlink.errors import DeadlineExceeded
from interlink.resilience.deadline import deadline
from interlink.testing.clock import FakeClock

SCRIPT = Path(sys.executable).parent / "interlink"
T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine to completion on a fresh event loop."""

    async def main() -> T:
        return await factory()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def result() -> DemoResult:
    """One fast run of the whole scenario, seed 1.

    The heap the rest of the suite left behind is frozen first: a full collection of it can
    pause the loop for longer than the scenario's 0.2 s timeout, and the phases' figures
    would then measure the test process, not the policies.
    """
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(run_scenario(seed=1, fast=True))
    finally:
        gc.unfreeze()


# --- the scenario ---------------------------------------------------------------------------


def test_phases_run_in_order_for_their_planned_time(result: DemoResult) -> None:
    """healthy -> down -> slow -> recovered, about one second each with --fast."""
    assert [p.name for p in result.phases] == [p.name for p in PHASES]
    for phase in result.phases:
        assert phase.duration == pytest.approx(FAST.phase, abs=0.15)
        assert phase.calls == phase.successes + phase.fallbacks + phase.errors
        assert phase.calls >= FAST.phase * FAST.rate * 0.6


def test_healthy_phase_gets_fresh_answers(result: DemoResult) -> None:
    """With the downstream healthy, calls get its answers fast and the breaker stays closed."""
    healthy = result.phase("healthy")
    assert healthy.successes >= 0.9 * healthy.calls
    assert healthy.errors == 0
    assert healthy.p50 < 0.05
    assert healthy.reached == healthy.sent
    assert healthy.transitions == ()


def test_down_phase_opens_the_breaker(result: DemoResult) -> None:
    """Refused connections open the breaker soon after the port closes."""
    down = result.phase("down")
    opened = [t for t in down.transitions if (t.old, t.new) == ("closed", "open")]
    assert opened
    assert opened[0].at - down.started < 0.5


def test_down_phase_answers_from_the_cache_quickly(result: DemoResult) -> None:
    """While the port is closed callers get the last good answer, fast, never an error."""
    down = result.phase("down")
    assert down.successes == 0
    assert down.errors == 0
    assert down.fallbacks == down.calls
    assert down.p99 < 0.1


def test_down_phase_keeps_load_off_the_dead_port(result: DemoResult) -> None:
    """Once open, the breaker lets only trial calls through: few attempts, none reach it."""
    down = result.phase("down")
    assert down.reached == 0
    assert down.sent < down.calls / 2
    assert down.retries <= down.sent


def test_slow_phase_falls_back_within_the_timeout(result: DemoResult) -> None:
    """A downstream answering after 2 s costs callers at most the 200 ms timeout."""
    slow = result.phase("slow")
    assert slow.successes == 0
    assert slow.errors == 0
    assert slow.fallbacks == slow.calls
    assert slow.slowest <= result.timeout + 0.05
    assert slow.p99 <= result.timeout + 0.05


def test_slow_phase_trials_time_out_and_reopen_the_breaker(result: DemoResult) -> None:
    """Each half-open trial reaches the slow downstream, times out, and reopens the breaker."""
    slow = result.phase("slow")
    trials = [t for t in slow.transitions if (t.old, t.new) == ("half_open", "open")]
    assert trials
    assert 1 <= slow.reached <= slow.sent
    assert slow.reached < slow.calls / 4


def test_recovered_phase_closes_the_breaker_again(result: DemoResult) -> None:
    """After recovery a trial succeeds, the breaker closes, and fresh answers return."""
    recovered = result.phase("recovered")
    closed = [t for t in recovered.transitions if t.new == "closed"]
    assert closed
    assert closed[0].at - recovered.started < FAST.cooldown + 0.3
    assert recovered.breaker_state == "closed"
    assert recovered.successes >= recovered.calls / 2
    assert recovered.errors == 0


def test_summary_explains_each_phase(result: DemoResult) -> None:
    """The closing lines name every phase and the numbers behind them."""
    lines = summary(result)
    assert [line.split(":", 1)[0] for line in lines] == [
        "[bold]Healthy",
        "[bold]Down",
        "[bold]Slow",
        "[bold]Recovered",
    ]
    down = result.phase("down")
    assert f"{down.fallbacks} of {down.calls} calls got the cached answer" in lines[1]
    assert "the breaker closed again" in lines[3]


# --- the command ----------------------------------------------------------------------------


def test_cli_demo_fast_exits_zero_and_prints_the_table() -> None:
    """`interlink demo --fast` runs the scenario, prints the table and the summary, exits 0."""
    if not SCRIPT.exists():
        pytest.fail(f"console script missing: {SCRIPT}; run `pip install -e .` in this venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
    env.pop("FORCE_COLOR", None)
    env |= {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "160"}
    done = subprocess.run(
        [str(SCRIPT), "demo", "--fast", "--seed", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    header = next(line for line in done.stdout.splitlines() if "phase" in line and "p99" in line)
    assert header.split() == [
        "phase",
        "secs",
        "calls",
        "fresh",
        "cached",
        "errors",
        "p50",
        "p99",
        "sent",
        "reached",
        "breaker",
    ]
    for phase in PHASES:
        assert f"  {phase.name} " in done.stdout
    assert "closed→open" in done.stdout
    for word in ("• Healthy:", "• Down:", "• Slow:", "• Recovered:"):
        assert word in done.stdout


# --- the downstream and the transport -------------------------------------------------------


def test_downstream_answers_requests_when_healthy() -> None:
    """A healthy downstream echoes the call id and counts the request."""

    async def scenario() -> tuple[Answer, int]:
        server = Downstream(rng=Random(0))
        await server.start()
        try:
            return await request(server.port, 42), server.requests
        finally:
            await server.stop()

    assert run(scenario) == (Answer(42), 1)


def test_stopped_downstream_refuses_connections_until_restarted() -> None:
    """stop() closes the port (refused), start() listens on the same port again."""

    async def scenario() -> None:
        server = Downstream(rng=Random(0))
        await server.start()
        port = server.port
        await server.stop()
        with pytest.raises(ConnectionRefusedError):
            await request(port, 1)
        await server.start()
        try:
            assert server.port == port
            assert await request(port, 2) == Answer(2)
        finally:
            await server.stop()

    run(scenario)


def test_slow_downstream_makes_the_transport_hit_its_deadline() -> None:
    """The transport sizes its timeout from remaining() and raises DeadlineExceeded."""

    async def scenario() -> None:
        server = Downstream(rng=Random(0), slow_delay=1.0)
        await server.start("slow")
        try:
            with deadline(0.05), pytest.raises(DeadlineExceeded):
                await request(server.port, 7)
            assert server.requests == 1
        finally:
            await server.stop()

    run(scenario)


def test_cancellation_after_the_deadline_is_reported_as_a_timeout() -> None:
    """A cancel that lands once the deadline has passed surfaces as DeadlineExceeded."""
    clock = FakeClock()

    async def scenario() -> None:
        server = Downstream(rng=Random(0), slow_delay=1.0)
        await server.start("slow")
        try:
            # The deadline passes while the request is out; then the caller's own timer
            # (standing in for the pipeline's timeout) cancels it before the transport's.
            asyncio.get_running_loop().call_later(0.01, clock.advance, 1.0)
            with deadline(0.5, clock=clock), pytest.raises(DeadlineExceeded):
                await asyncio.wait_for(request(server.port, 3), 0.03)
        finally:
            await server.stop()

    run(scenario)


def test_cancellation_before_the_deadline_stays_a_cancellation() -> None:
    """A caller going away while time is left is not mistaken for a timeout."""

    async def scenario() -> None:
        server = Downstream(rng=Random(0), slow_delay=1.0)
        await server.start("slow")
        try:
            with deadline(0.5):
                task = asyncio.create_task(request(server.port, 4))
                await asyncio.sleep(0.02)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            await server.stop()

    run(scenario)


def test_transport_rejects_an_answer_for_another_call() -> None:
    """An answer that does not echo this call's id is an error, never taken as fresh."""

    async def scenario() -> None:
        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(b"OK 999\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(BadAnswer):
                await request(port, 1)
        finally:
            server.close()
            await server.wait_closed()

    run(scenario)


# --- helpers ----------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..10 is 5, p99 is the largest, and no samples give 0."""
    values = [float(i) for i in range(1, 11)]
    assert percentile(values, 50) == 5.0
    assert percentile(values, 99) == 10.0
    assert percentile([], 99) == 0.0


def test_latencies_print_in_readable_units() -> None:
    """Sub-millisecond, milliseconds and seconds each get sensible precision."""
    assert [ms(0.00042), ms(0.0031), ms(0.2014), ms(2.0)] == [
        "0.42 ms",
        "3.1 ms",
        "201 ms",
        "2.00 s",
    ]
