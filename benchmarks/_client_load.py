"""Closed-loop load on an async client, shared by ``grpc_client.py`` and ``http_client.py``.

A round runs ``concurrency`` workers for ``seconds``, each awaiting one call after the other, and
gives req/s, p50/p99 latency and the client's CPU per request (``time.process_time``: this
process, so the server runs in a process of its own). ``measure`` runs every contender's rounds
at each concurrency, in shuffled order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import _report as rep

Call = Callable[[], Awaitable[object]]
LEVELS = (1, 32)  # concurrent calls


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float


@dataclass
class Contender:
    name: str
    role: str  # for the script's table: the baseline, the one with a target, one for information
    call: Call
    close: Callable[[], Awaitable[None]]
    # entered around each of the contender's rounds, e.g. a request context to propagate
    context: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    results: dict[int, list[Result]] = field(default_factory=dict)

    def best(self, concurrency: int) -> Result:
        """Each figure's best round: scheduling noise only ever makes a figure worse."""
        rounds = self.results[concurrency]
        return Result(
            rps=max(r.rps for r in rounds),
            p50_us=min(r.p50_us for r in rounds),
            p99_us=min(r.p99_us for r in rounds),
            cpu_us=min(r.cpu_us for r in rounds),
        )

    def fastest(self, concurrency: int) -> Result:
        """The round with the most req/s, all its figures."""
        return max(self.results[concurrency], key=lambda r: r.rps)


def parse_args(
    argv: list[str] | None,
    description: str,
    *,
    rounds: tuple[int, int],
    seconds: tuple[float, float],
) -> argparse.Namespace:
    """A client script's options; ``rounds`` and ``seconds`` are (default, with ``--quick``),
    filled in when not given."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds)")
    parser.add_argument(
        "--rounds", type=int, help=f"rounds per contender (default {rounds[0]}, quick {rounds[1]})"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help=f"seconds per round (default {seconds[0]:g}, quick {seconds[1]:g})",
    )
    rep.add_output_options(parser)
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (rounds[1] if args.quick else rounds[0])
    args.seconds = args.seconds or (seconds[1] if args.quick else seconds[0])
    return args


def run(
    script: str,
    address: str,
    make: Callable[[str], Awaitable[list[Contender]]],
    args: argparse.Namespace,
) -> tuple[list[Contender], float]:
    """Start ``script``'s server, measure the contenders ``make(address)`` returns (``{port}``
    filled in) at each of ``LEVELS``; the contenders and the seconds it all took."""
    started = time.perf_counter()
    with server_process(script) as port:
        made = functools.partial(make, address.format(port=port))
        contenders = asyncio.run(measure(made, LEVELS, args.rounds, args.seconds))
    return contenders, time.perf_counter() - started


@contextlib.contextmanager
def server_process(script: str) -> Iterator[int]:
    """Run ``script --serve`` in its own process; yields the port it prints when listening."""
    proc = subprocess.Popen([sys.executable, script, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(5)


async def run_round(call: Call, concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        clock = time.perf_counter
        record = latencies.append
        while clock() < stop:
            t0 = clock()
            await call()
            record(clock() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    n = len(latencies)
    return Result(
        rps=n / wall,
        p50_us=latencies[n // 2] * 1e6,
        p99_us=latencies[min(n - 1, int(n * 0.99))] * 1e6,
        cpu_us=cpu / n * 1e6,
    )


async def measure(
    make: Callable[[], Awaitable[list[Contender]]],
    levels: Sequence[int],
    rounds: int,
    seconds: float,
) -> list[Contender]:
    """The contenders ``make()`` returns (made in this event loop), each measured ``rounds``
    times per concurrency level; closed at the end."""
    contenders = await make()
    rng = random.Random(7)
    try:
        for c in contenders:  # warm up: open connections, fill caches
            with c.context():
                await run_round(c.call, 32, min(seconds, 0.3))
        for concurrency in levels:
            for _ in range(rounds):
                order = contenders[:]
                rng.shuffle(order)
                for c in order:
                    with c.context():
                        result = await run_round(c.call, concurrency, seconds)
                    c.results.setdefault(concurrency, []).append(result)
    finally:
        for c in contenders:
            await c.close()
    return contenders


# ------------------------------------------------------------------------------------ report


def headers(versus: str) -> tuple[str, ...]:
    """The table's columns; ``versus`` names the comparison with the baseline."""
    return (
        "concurrency",
        "contender",
        "req/s",
        "p50 (us)",
        "p99 (us)",
        "client CPU (us/req)",
        versus,
        "target",
        "result",
    )


# what a script makes of a contender's figures (r) next to the baseline's (ref) at a concurrency:
# the comparison, the target and whether it is met (None: no target)
Judge = Callable[[Contender, int, Result, Result], tuple[str, str, bool | None]]


def table(
    contenders: list[Contender],
    baseline: str,
    figures: Callable[[Contender, int], Result],
    judge: Judge,
) -> tuple[list[list[str]], int]:
    """The rows at each of ``LEVELS``, ``figures`` of each contender (``Contender.best`` or
    ``.fastest``) judged against those of the one whose role is ``baseline``; and the number of
    missed targets."""
    rows: list[list[str]] = []
    missed = 0
    base = next(c for c in contenders if c.role == baseline)
    for concurrency in LEVELS:
        ref = figures(base, concurrency)
        for c in contenders:
            r = figures(c, concurrency)
            versus, target, ok = judge(c, concurrency, r, ref)
            verdict = "" if ok is None else "pass" if ok else "**FAIL**"
            missed += ok is False
            rows.append(
                [
                    str(concurrency) if c is contenders[0] else "",
                    c.name,
                    f"{r.rps:,.0f}",
                    f"{r.p50_us:,.0f}",
                    f"{r.p99_us:,.0f}",
                    f"{r.cpu_us:,.0f}",
                    versus,
                    target,
                    verdict,
                ]
            )
    return rows, missed
