"""Shared timing, memory and reporting helpers for the claim scripts in this folder.

How a timing is taken: every contender of a group (the bare call included) is timed once per
round, in a shuffled order, and the rounds repeat; a contender's figure is the minimum over the
rounds (the run least disturbed by the rest of a shared machine) and its overhead is that minus
the bare call's minimum from the same rounds. The garbage collector is off while a loop runs,
as in ``timeit``. Every loop is the same Python ``for`` over ``itertools.repeat``, so the loop's
own cost cancels out in the subtraction.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import platform
import random
import re
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs" / "performance.md"

_NO_ARG = object()


@dataclass
class Contender:
    """One thing to time: ``fn()`` (or ``fn(arg)`` when ``arg`` is given) in a loop.

    ``role``: "bare" (the baseline of the group), "interlink" or "peer". Rows with a ``target``
    (a ratio to the fastest peer's overhead) pass when they are at or under it.
    """

    name: str
    fn: Callable[..., Any]
    role: str = "peer"
    arg: Any = _NO_ARG
    target: float | None = None
    target_text: str = ""
    samples: list[float] = field(default_factory=list)
    n: int = 0

    @property
    def best(self) -> float:
        return min(self.samples)


@dataclass
class Row:
    """One line of a report table."""

    benchmark: str
    contender: str
    value: str
    ratio: str
    target: str
    verdict: str  # "pass", "FAIL" or ""

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


# ---------------------------------------------------------------------------------- timing loops
# Four loops, one per (sync/async) x (plain/catching). They differ only where they must, so the
# baseline measured with the same loop cancels the loop's cost.


def _loop(fn: Callable[..., Any], arg: Any, n: int) -> int:
    it = itertools.repeat(None, n)
    if arg is _NO_ARG:
        t0 = time.perf_counter_ns()
        for _ in it:
            fn()
        return time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for _ in it:
        fn(arg)
    return time.perf_counter_ns() - t0


def _loop_catch(fn: Callable[..., Any], arg: Any, n: int) -> int:
    it = itertools.repeat(None, n)
    if arg is _NO_ARG:
        t0 = time.perf_counter_ns()
        for _ in it:
            try:  # noqa: SIM105 - a with-block costs more than what is measured
                fn()
            except Exception:
                pass
        return time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for _ in it:
        try:  # noqa: SIM105 - a with-block costs more than what is measured
            fn(arg)
        except Exception:
            pass
    return time.perf_counter_ns() - t0


# The async loops hand control to the event loop every YIELD_EVERY awaits, as a real program
# does between requests: asyncio only sweeps cancelled timers (left by ``asyncio.timeout``) when
# it runs, so a loop that never yields would charge a growing timer heap to whoever uses one.
YIELD_EVERY = 1024


def _chunks(n: int) -> list[int]:
    full, rest = divmod(n, YIELD_EVERY)
    return [YIELD_EVERY] * full + ([rest] if rest else [])


async def _aloop(fn: Callable[..., Any], arg: Any, n: int) -> int:
    chunks = _chunks(n)
    repeat = itertools.repeat
    if arg is _NO_ARG:
        t0 = time.perf_counter_ns()
        for size in chunks:
            for _ in repeat(None, size):
                await fn()
            await asyncio.sleep(0)
        return time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for size in chunks:
        for _ in repeat(None, size):
            await fn(arg)
        await asyncio.sleep(0)
    return time.perf_counter_ns() - t0


async def _aloop_catch(fn: Callable[..., Any], arg: Any, n: int) -> int:
    chunks = _chunks(n)
    repeat = itertools.repeat
    if arg is _NO_ARG:
        t0 = time.perf_counter_ns()
        for size in chunks:
            for _ in repeat(None, size):
                try:  # noqa: SIM105 - a with-block costs more than what is measured
                    await fn()
                except Exception:
                    pass
            await asyncio.sleep(0)
        return time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    for size in chunks:
        for _ in repeat(None, size):
            try:  # noqa: SIM105 - a with-block costs more than what is measured
                await fn(arg)
            except Exception:
                pass
        await asyncio.sleep(0)
    return time.perf_counter_ns() - t0


@dataclass
class Settings:
    """How long to time: ``rounds`` per contender, each loop running about ``loop_ms``."""

    rounds: int = 15
    loop_ms: float = 20.0
    seed: int = 1


def _calibrate(run: Callable[[int], int], loop_ms: float) -> int:
    """Iterations for a loop of about ``loop_ms``; the probing doubles as a warm-up."""
    n = 64
    while True:
        took = run(n)
        if took >= 2_000_000 or n >= 1 << 24:  # 2 ms: enough to extrapolate
            break
        n *= 4
    per_call = took / n
    return max(100, int(loop_ms * 1e6 / per_call))


def time_group(contenders: Sequence[Contender], settings: Settings, *, catch: bool = False) -> None:
    """Time sync contenders in interleaved rounds; fills ``samples`` (ns per call)."""
    loop = _loop_catch if catch else _loop
    rng = random.Random(settings.seed)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for c in contenders:
            c.n = _calibrate(lambda n, c=c: loop(c.fn, c.arg, n), settings.loop_ms)
        order = list(contenders)
        for _ in range(settings.rounds):
            rng.shuffle(order)
            for c in order:
                c.samples.append(loop(c.fn, c.arg, c.n) / c.n)
    finally:
        if enabled:
            gc.enable()
        gc.collect()


def time_group_async(
    contenders: Sequence[Contender], settings: Settings, *, catch: bool = False
) -> None:
    """Like ``time_group`` for coroutine functions: ``await fn()`` in a loop, inside one task."""
    loop = _aloop_catch if catch else _aloop

    async def main() -> None:
        rng = random.Random(settings.seed)
        enabled = gc.isenabled()
        gc.disable()
        try:
            for c in contenders:
                n = 64
                while True:
                    took = await loop(c.fn, c.arg, n)
                    if took >= 2_000_000 or n >= 1 << 24:
                        break
                    n *= 4
                c.n = max(100, int(settings.loop_ms * 1e6 / (took / n)))
            order = list(contenders)
            for _ in range(settings.rounds):
                rng.shuffle(order)
                for c in order:
                    c.samples.append(await loop(c.fn, c.arg, c.n) / c.n)
        finally:
            if enabled:
                gc.enable()
            gc.collect()

    asyncio.run(main())


def overhead_rows(benchmark: str, contenders: Sequence[Contender]) -> list[Row]:
    """Rows for a timed group: overhead over the bare call, ratio to the fastest peer."""
    bare = next(c for c in contenders if c.role == "bare")
    base = bare.best
    peers = [c.best - base for c in contenders if c.role == "peer"]
    fastest = min(peers) if peers else None
    # how far the typical round sat above the best one: a noisy machine shows up here
    spread = statistics.median(statistics.median(c.samples) / c.best - 1 for c in contenders)
    rows = [
        Row(
            benchmark,
            f"{bare.name} (baseline; rounds {spread:.0%} over best)",
            f"{base:.1f} ns/call",
            "",
            "",
            "",
        )
    ]
    for c in contenders:
        if c.role == "bare":
            continue
        over = c.best - base
        ratio = over / fastest if fastest and fastest > 0 else None
        verdict = ""
        if c.target is not None and ratio is not None:
            verdict = "pass" if ratio <= c.target else "FAIL"
        rows.append(
            Row(
                benchmark,
                c.name,
                f"{over:.0f}",
                "" if ratio is None else f"{ratio:.2f}",
                c.target_text,
                verdict,
            )
        )
    return rows


# ---------------------------------------------------------------------------------- memory


def bytes_per_object(make: Callable[[int], Any], count: int) -> float:
    """Traced bytes per object kept alive, over ``count`` objects made by ``make(i)``."""
    make(-1)  # first use: imports, class caches, interned strings
    keep: list[Any] = [None] * count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            keep[i] = make(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / count


def growth(fn: Callable[[], Any], count: int, *, catch: bool = False) -> int:
    """Traced bytes still held after ``count`` calls of ``fn`` (after a warm-up and a collect)."""
    loop = _loop_catch if catch else _loop
    loop(fn, _NO_ARG, min(count, 10_000))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop(fn, _NO_ARG, count)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


# ---------------------------------------------------------------------------------- threads


def wall_time_threads(fn: Callable[[], Any], threads: int, calls: int) -> float:
    """Seconds for ``threads`` threads, started together, to make ``calls`` calls each."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            fn()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------- reporting

HEADERS = ("benchmark", "contender", "overhead (ns/call)", "ratio to fastest peer", "target", "")


def print_table(title: str, rows: Sequence[Row], headers: Sequence[str] = HEADERS) -> None:
    """A rich table on the terminal, falling back to plain text without rich."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency of interlink
        print(title)
        print(to_markdown(rows, headers))
        return
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="right" if 2 <= i <= 3 else "left")
    last = None
    for r in rows:
        if last is not None and r.benchmark != last:
            table.add_section()
        last = r.benchmark
        style = {"pass": "green", "FAIL": "bold red"}.get(r.verdict, "")
        verdict = f"[{style}]{r.verdict}[/]" if style else r.verdict
        table.add_row(r.benchmark, r.contender, r.value, r.ratio, r.target, verdict)
    Console(width=160).print(table)


def to_markdown(rows: Sequence[Row], headers: Sequence[str] = HEADERS) -> str:
    """The same table as GitHub markdown; a benchmark's name is shown on its first row only."""
    heads = [h or "result" for h in headers]
    lines = ["| " + " | ".join(heads) + " |"]
    lines.append("|" + "|".join("---:" if 2 <= i <= 3 else "---" for i in range(len(heads))) + "|")
    last = None
    for r in rows:
        bench = r.benchmark if r.benchmark != last else ""
        last = r.benchmark
        verdict = f"**{r.verdict}**" if r.failed else r.verdict
        cells = [bench, r.contender, r.value, r.ratio, r.target, verdict]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def environment() -> str:
    """Date, Python and machine, for the header of a results block."""
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
        f"{_cpus()} CPUs"
    )


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def command_line() -> str:
    """The command that produced this run, as typed from the repository root (``run.py`` passes
    its own command line down in ``INTERLINK_BENCH_COMMAND``)."""
    given = os.environ.get("INTERLINK_BENCH_COMMAND")
    if given:
        return given
    return " ".join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def replace_block(key: str, text: str, path: Path = DOCS) -> None:
    """Replace the text between ``<!-- bench:KEY:start -->`` and ``<!-- bench:KEY:end -->``."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"{path}: no {start} ... {end} block to replace")
    doc = pattern.sub(lambda _: f"{start}\n{text.strip()}\n{end}", doc)
    path.write_text(doc, encoding="utf-8")


def callgrind_instructions(argv: Sequence[str]) -> int:
    """Instructions the command ``argv`` (a Python process) executes, counted by valgrind's
    callgrind (its child processes not included)."""
    import subprocess

    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))
