"""How the demo shows itself: the header, the per-phase table (live and final), the summary."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from interlink.demo._caller import (
    BREAKER_MINIMUM_CALLS,
    BREAKER_WINDOW,
    BUDGET_MIN_PER_SECOND,
    BUDGET_RATIO,
    RETRIES,
    RETRY_BASE,
)
from interlink.demo._downstream import HEALTHY_LATENCY
from interlink.demo._scenario import PHASES, Phase, Scenario, Timing
from interlink.demo._stats import DemoResult, PhaseStats, Transition

__all__ = [
    "COLUMNS",
    "LEGEND",
    "breaker_lines",
    "header",
    "live_view",
    "narration",
    "results",
    "summary",
    "table",
]

COLUMNS = (
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
)
LEGEND = (
    "[dim]fresh: the downstream's answer to that very call · cached: the fallback's last good "
    "answer · errors: no answer at all · p50/p99: latency the caller saw · sent: attempts the "
    "breaker let through · reached: requests the downstream read[/]"
)
_MAX_TRANSITIONS = 6
# Below this many columns the breaker's transitions go under the table instead of into it.
WIDE = 100


def ms(seconds: float) -> str:
    """A latency for people: ``0.42 ms``, ``3.1 ms``, ``201 ms``, ``2.00 s``."""
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    millis = seconds * 1000
    if millis < 1:
        return f"{millis:.2f} ms"
    return f"{millis:.1f} ms" if millis < 10 else f"{millis:.0f} ms"


def _cell_ms(seconds: float) -> str:
    return ms(seconds).replace(" ", "")


def header(timing: Timing, port: int, seed: int) -> RenderableType:
    """What is about to happen, in three lines."""
    low, high = (round(s * 1000) for s in HEALTHY_LATENCY)
    lines = [
        f"[bold]interlink demo[/] · seed {seed} · downstream on 127.0.0.1:{port} (real TCP)",
        f"A caller starts ~{timing.rate:.0f} calls/s through one pipeline: [cyan]fallback[/] "
        f"(last good answer) → [cyan]timeout[/] {ms(timing.timeout)} → [cyan]retry[/] x{RETRIES} "
        f"(backoff from {ms(RETRY_BASE)}, budget {BUDGET_RATIO:.0%} + {BUDGET_MIN_PER_SECOND:g}/s)"
        f" → [cyan]circuit breaker[/] (opens at 50 % failures of the last {BREAKER_WINDOW} "
        f"calls, ≥ {BREAKER_MINIMUM_CALLS}; cooldown {timing.cooldown:g} s).",
        f"The downstream is healthy ({low}-{high} ms), then down (port closed), then slow "
        f"(answers after {timing.slow_delay:g} s), then healthy again: {timing.phase:g} s each.",
    ]
    return Text.from_markup("\n".join(lines))


def narration(phase: Phase, at: float, timing: Timing, port: int) -> str:
    """One line as a phase starts."""
    low, high = (round(s * 1000) for s in HEALTHY_LATENCY)
    what = {
        "healthy": f"the downstream answers in {low}-{high} ms",
        "down": f"port {port} closed: every connect is refused",
        "slow": f"port {port} open again, but answers take {timing.slow_delay:g} s",
        "recovered": f"the downstream answers in {low}-{high} ms again",
    }[phase.name]
    return f"[dim]+{at:4.1f}s[/] [bold]{phase.name:<9}[/] {what}"


def _breaker_cell(stats: PhaseStats) -> Text:
    if not stats.transitions:
        return Text(f"{stats.breaker_state}", style="dim")
    shown: list[Transition | str] = list(stats.transitions)
    if len(shown) > _MAX_TRANSITIONS:
        hidden = len(shown) - _MAX_TRANSITIONS + 1
        shown = [*shown[: _MAX_TRANSITIONS - 2], f"… {hidden} more", *shown[-1:]]
    text = Text()
    for i, item in enumerate(shown):
        if i:
            text.append("\n")
        style = "red" if isinstance(item, Transition) and item.new == "open" else ""
        if isinstance(item, Transition) and item.new == "closed":
            style = "green"
        text.append(str(item), style=style)
    return text


def table(
    phases: Sequence[PhaseStats], *, running: str | None = None, breaker: bool = True
) -> Table:
    """One row per phase; ``running`` marks the phase still in progress. ``breaker=False``
    leaves the transitions out (for narrow terminals: ``breaker_lines`` has them)."""
    grid = Table(
        box=box.SIMPLE_HEAD,
        title="What the callers got, phase by phase",
        padding=(0, 1),
        collapse_padding=True,
    )
    columns = COLUMNS if breaker else COLUMNS[:-1]
    for name in columns:
        grid.add_column(
            name,
            justify="left" if name in ("phase", "breaker") else "right",
            no_wrap=name != "breaker",
        )
    for stats in phases:
        label = f"▶ {stats.name}" if stats.name == running else stats.name
        cells: list[RenderableType] = [
            label,
            f"{stats.duration:.1f}",
            str(stats.calls),
            Text(str(stats.successes), style="green" if stats.successes else ""),
            Text(str(stats.fallbacks), style="yellow" if stats.fallbacks else ""),
            Text(str(stats.errors), style="bold red" if stats.errors else ""),
            _cell_ms(stats.p50),
            _cell_ms(stats.p99),
            str(stats.sent),
            str(stats.reached),
        ]
        if breaker:
            cells.append(_breaker_cell(stats))
        grid.add_row(*cells)
    return grid


def breaker_lines(phases: Sequence[PhaseStats]) -> list[str]:
    """The breaker's transitions, one line per phase that had any."""
    return [
        f"[bold]{stats.name}[/]: " + " · ".join(str(t) for t in stats.transitions)
        for stats in phases
        if stats.transitions
    ]


def results(phases: Sequence[PhaseStats], width: int, *, running: str | None = None) -> Group:
    """The table, with the transitions in a column when ``width`` allows, else below it."""
    wide = width >= WIDE
    parts: list[RenderableType] = [table(phases, running=running, breaker=wide)]
    if not wide:
        lines = breaker_lines(phases)
        parts.append(Text.from_markup("breaker " + ("\n".join(lines) if lines else "closed")))
    return Group(*parts)


def live_view(scenario: Scenario, width: int) -> RenderableType:
    """The table so far plus a progress bar for the running phase."""
    phases = scenario.snapshot()
    if not phases:
        return Text("starting…")
    current = phases[-1]
    timing = scenario.timing
    elapsed = min(current.duration, timing.phase)
    status = Text.assemble(
        (f" phase {len(phases)}/{len(PHASES)} ", "bold"),
        (current.name, "bold cyan"),
        f"  {elapsed:.1f}/{timing.phase:g} s  breaker ",
        (scenario.breaker_state, "red" if scenario.breaker_state == "open" else "green"),
    )
    bar = ProgressBar(total=timing.phase, completed=elapsed, width=30)
    return Group(results(phases, width, running=current.name), bar, status)


def summary(result: DemoResult) -> list[str]:
    """What happened, in plain words, with the numbers that show it."""
    healthy = result.phase("healthy")
    down = result.phase("down")
    slow = result.phase("slow")
    recovered = result.phase("recovered")
    lines = [
        f"[bold]Healthy:[/] {healthy.successes} of {healthy.calls} calls got fresh answers "
        f"(p50 {ms(healthy.p50)}, p99 {ms(healthy.p99)}); the policies stay out of the way."
    ]
    opened = next((t for t in down.transitions if t.new == "open"), None)
    opened_text = (
        f"the breaker opened {ms(opened.at - down.started)} after the port closed"
        if opened
        else "the breaker never opened"
    )
    lines.append(
        f"[bold]Down:[/] {opened_text}; {down.fallbacks} of {down.calls} calls got the cached "
        f"answer (p99 {ms(down.fallback_p99)}) instead of an error ({down.errors} errors), and "
        f"only {down.sent} attempts ({down.retries} of them retries) went to the closed port"
        + (
            f"; the retry budget refused {down.budget_refusals} more."
            if down.budget_refusals
            else "."
        )
    )
    lines.append(
        f"[bold]Slow:[/] the downstream took {ms(result.slow_delay)} to answer, but no caller "
        f"waited past the {ms(result.timeout)} timeout (slowest call {ms(slow.slowest)}); "
        f"{slow.fallbacks} of {slow.calls} calls fell back, and only {slow.reached} requests "
        "reached the slow downstream: the breaker's trial calls."
    )
    closed = next((t for t in recovered.transitions if t.new == "closed"), None)
    closed_text = (
        f"the breaker closed again {ms(closed.at - recovered.started)} after the downstream "
        "came back"
        if closed
        else f"the breaker is still {recovered.breaker_state.replace('_', '-')}"
    )
    lines.append(
        f"[bold]Recovered:[/] {closed_text}; {recovered.successes} of {recovered.calls} calls "
        f"got fresh answers (p50 {ms(recovered.p50)})."
    )
    return lines
