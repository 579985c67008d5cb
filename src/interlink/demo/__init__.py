"""``interlink demo``: the resilience policies at work against a real, misbehaving downstream.

One process, no extras: a TCP server on ``127.0.0.1`` (``_downstream``) goes healthy -> down ->
slow -> healthy while callers send steady load through one ``Pipeline`` of fallback, timeout,
retry with a budget, and circuit breaker (``_caller``). Every number printed is measured: what
each call returned and how long it took, what reached the server, what the breaker did and when.

``run()`` is what the CLI calls: it prints and returns 0. ``run_scenario()`` returns the
measurements (``DemoResult``) for tests and for anyone who wants to build on the scenario.
"""

from __future__ import annotations

import asyncio
import os

from rich.console import Console
from rich.live import Live

from interlink.demo._report import LEGEND, header, live_view, narration, results, summary
from interlink.demo._scenario import FAST, NORMAL, PHASES, Phase, Scenario, Timing
from interlink.demo._stats import DemoResult, PhaseStats, Transition

__all__ = [
    "FAST",
    "NORMAL",
    "PHASES",
    "DemoResult",
    "PhaseStats",
    "Timing",
    "Transition",
    "run",
    "run_scenario",
]

_REFRESH = 0.1
_PIPE_WIDTH = 120


async def run(*, seed: int = 7, fast: bool = False) -> int:
    """Play the scenario with a live display, print the results, and return the exit status."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped into a log: rich would assume 80 columns and squeeze the table.
        console = Console(highlight=False, width=_PIPE_WIDTH)
    await run_scenario(seed=seed, fast=fast, console=console)
    return 0


async def run_scenario(
    *,
    seed: int = 7,
    fast: bool = False,
    timing: Timing | None = None,
    console: Console | None = None,
) -> DemoResult:
    """Play the scenario and return what was measured; show it on ``console`` if given.

    ``timing`` overrides the phase lengths and timeouts (``fast`` picks ``FAST`` over
    ``NORMAL``). Without a console nothing is printed.
    """
    scenario = Scenario(seed=seed, timing=timing or (FAST if fast else NORMAL))
    if console is None:
        return await scenario.run()

    def on_phase(phase: Phase) -> None:
        port = scenario.downstream.port  # known once the downstream listens, before phase one
        if phase is PHASES[0]:
            console.print(header(scenario.timing, port, seed))
            console.print()
        console.print(narration(phase, scenario.now(), scenario.timing, port))

    # Refreshed from the event loop (not rich's thread) so the view never reads counters
    # while a call is updating them.
    with Live(console=console, auto_refresh=False, transient=True) as live:
        refresher = asyncio.create_task(_refresh(live, scenario))
        try:
            result = await scenario.run(on_phase)
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
    console.print()
    console.print(results(result.phases, console.width))
    console.print(LEGEND)
    console.print()
    for line in summary(result):
        console.print(f"• {line}")
    return result


async def _refresh(live: Live, scenario: Scenario) -> None:
    while True:
        live.update(live_view(scenario, live.console.width), refresh=True)
        await asyncio.sleep(_REFRESH)
