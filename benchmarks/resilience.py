"""Claim: interlink's resilience core costs a fraction of what the peer libraries cost.

Everything is measured in one process and one run, and reported as ratios to the fastest peer
measured in the same rounds, so the claims hold on any machine rather than on ours.

- breaker, closed path (sync, async): interlink's overhead <= 1/2 of the fastest peer's
  (pybreaker, purgatory, aiobreaker, circuitbreaker, each in its idiomatic decorator form),
  through the decorator and through ``.call``;
- breaker, OPEN rejection (sync, async): <= 1/2 of the fastest peer's, and ``try_acquire()``,
  the exception-free check, too;
- retry, success path (sync, async): <= 1/2 of the fastest of tenacity, stamina, backoff;
- Pipeline(timeout + retry + breaker + bulkhead), success path: <= 1.5x the fastest peer's
  breaker alone;
- memory: <= 300 bytes per breaker at rest, no growth over 1,000,000 calls and over 1,000,000
  rejections while OPEN (tracemalloc);
- concurrency: no lock is held while the wrapped call runs: 8 threads x 10 calls of 10 ms take
  about the time of 10 calls.

Usage: ``python benchmarks/resilience.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # a script folder, not a package
import _report as rep
from _resilience_contenders import (
    _tripped_interlink,
    af,
    async_breakers,
    f,
    pipeline,
    retriers,
    sync_breakers,
)
from _resilience_memory_concurrency import (
    MEM_HEADERS,
    THREADS,
    concurrency_rows,
    growth_rows,
    memory_rows,
)

from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.pipeline import Pipeline
from interlink.resilience.retry import Retry

CLOSED_TARGET = 1 / 2
OPEN_TARGET = 1 / 2
RETRY_TARGET = 1 / 2
PIPELINE_TARGET = 1.5


def _decorates(policy: Any, fn: Callable[..., Any]) -> Callable[..., Any] | None:
    try:
        return policy(fn)  # type: ignore[no-any-return]
    except TypeError:
        return None


def _ratio_text(target: float) -> str:
    return f"<= 1/{round(1 / target)}" if target < 1 else f"<= {target:g}"


# ---------------------------------------------------------------------------------- timing


def closed_sync(s: h.Settings, pipe: Any | None) -> list[h.Row]:
    b = CircuitBreaker("bench")
    cs = [
        h.Contender("f()", f, role="bare"),
        h.Contender(
            "interlink @breaker",
            b(f),
            "interlink",
            target=CLOSED_TARGET,
            target_text=_ratio_text(CLOSED_TARGET),
        ),
        h.Contender(
            "interlink breaker.call(f)",
            CircuitBreaker("bench").call,
            "interlink",
            arg=f,
            target=CLOSED_TARGET,
            target_text=_ratio_text(CLOSED_TARGET),
        ),
    ]
    if pipe is not None:
        cs.append(
            h.Contender(
                "interlink Pipeline.call(f)",
                pipe.call,
                "interlink",
                arg=f,
                target=PIPELINE_TARGET,
                target_text=_ratio_text(PIPELINE_TARGET),
            )
        )
        deco = _decorates(pipe, f)
        if deco is not None:
            cs.append(h.Contender("interlink @pipeline", deco, "interlink"))
    cs += [h.Contender(name, w) for name, w in sync_breakers(f, tripped=False)]
    h.time_group(cs, s)
    return h.overhead_rows("breaker closed, sync", cs)


def closed_async(s: h.Settings, pipe: Any | None) -> list[h.Row]:
    async def build() -> list[tuple[str, Callable[[], Any]]]:
        return await async_breakers(tripped=False)

    b = CircuitBreaker("bench")
    cs = [
        h.Contender("await af()", af, role="bare"),
        h.Contender(
            "interlink @breaker",
            b(af),
            "interlink",
            target=CLOSED_TARGET,
            target_text=_ratio_text(CLOSED_TARGET),
        ),
        h.Contender(
            "interlink breaker.acall(af)",
            CircuitBreaker("bench").acall,
            "interlink",
            arg=af,
            target=CLOSED_TARGET,
            target_text=_ratio_text(CLOSED_TARGET),
        ),
    ]
    if pipe is not None:
        cs.append(
            h.Contender(
                "interlink Pipeline.acall(af)",
                pipe.acall,
                "interlink",
                arg=af,
                target=PIPELINE_TARGET,
                target_text=_ratio_text(PIPELINE_TARGET),
            )
        )
        deco = _decorates(pipe, af)
        if deco is not None:
            cs.append(h.Contender("interlink @pipeline", deco, "interlink"))
        # for reading the row above: what the async timeout (cancellation at the deadline)
        # costs, next to the same pipeline without it
        untimed = Pipeline(retry=Retry(3), breaker=CircuitBreaker("bench"), bulkhead=Bulkhead(100))
        cs.append(
            h.Contender(
                "interlink Pipeline without timeout, acall", untimed.acall, "interlink", arg=af
            )
        )
    cs += [h.Contender(name, w) for name, w in asyncio.run(build())]
    h.time_group_async(cs, s)
    return h.overhead_rows("breaker closed, async", cs)


def open_sync(s: h.Settings) -> list[h.Row]:
    b = _tripped_interlink()
    probe = _tripped_interlink()
    cs = [
        h.Contender("f() in try/except", f, role="bare"),
        h.Contender(
            "interlink @breaker",
            b(f),
            "interlink",
            target=OPEN_TARGET,
            target_text=_ratio_text(OPEN_TARGET),
        ),
        h.Contender(
            "interlink breaker.call(f)",
            b.call,
            "interlink",
            arg=f,
            target=OPEN_TARGET,
            target_text=_ratio_text(OPEN_TARGET),
        ),
        h.Contender(
            "interlink try_acquire() (no raise)",
            probe.try_acquire,
            "interlink",
            target=OPEN_TARGET,
            target_text=_ratio_text(OPEN_TARGET),
        ),
    ]
    assert probe.try_acquire() == 0
    cs += [h.Contender(name, w) for name, w in sync_breakers(f, tripped=True)]
    h.time_group(cs, s, catch=True)
    return h.overhead_rows("breaker OPEN rejection, sync", cs)


def open_async(s: h.Settings) -> list[h.Row]:
    async def build() -> list[tuple[str, Callable[[], Any]]]:
        return await async_breakers(tripped=True)

    b = _tripped_interlink()
    cs = [
        h.Contender("await af() in try/except", af, role="bare"),
        h.Contender(
            "interlink @breaker",
            b(af),
            "interlink",
            target=OPEN_TARGET,
            target_text=_ratio_text(OPEN_TARGET),
        ),
        h.Contender(
            "interlink breaker.acall(af)",
            b.acall,
            "interlink",
            arg=af,
            target=OPEN_TARGET,
            target_text=_ratio_text(OPEN_TARGET),
        ),
    ]
    cs += [h.Contender(name, w) for name, w in asyncio.run(build())]
    h.time_group_async(cs, s, catch=True)
    return h.overhead_rows("breaker OPEN rejection, async", cs)


def retry_sync(s: h.Settings) -> list[h.Row]:
    r = Retry(3)
    cs = [
        h.Contender("f()", f, role="bare"),
        h.Contender(
            "interlink @retry",
            r(f),
            "interlink",
            target=RETRY_TARGET,
            target_text=_ratio_text(RETRY_TARGET),
        ),
        h.Contender(
            "interlink retry.call(f)",
            r.call,
            "interlink",
            arg=f,
            target=RETRY_TARGET,
            target_text=_ratio_text(RETRY_TARGET),
        ),
    ]
    cs += [h.Contender(name, w) for name, w in retriers(f)]
    h.time_group(cs, s)
    return h.overhead_rows("retry success, sync", cs)


def retry_async(s: h.Settings) -> list[h.Row]:
    r = Retry(3)
    cs = [
        h.Contender("await af()", af, role="bare"),
        h.Contender(
            "interlink @retry",
            r(af),
            "interlink",
            target=RETRY_TARGET,
            target_text=_ratio_text(RETRY_TARGET),
        ),
        h.Contender(
            "interlink retry.acall(af)",
            r.acall,
            "interlink",
            arg=af,
            target=RETRY_TARGET,
            target_text=_ratio_text(RETRY_TARGET),
        ),
    ]
    cs += [h.Contender(name, w) for name, w in retriers(af)]
    h.time_group_async(cs, s)
    return h.overhead_rows("retry success, async", cs)


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds)")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 15, quick 2)")
    rep.add_output_options(
        parser,
        markdown="also write the tables as markdown here",
        docs="rewrite the results block of docs/performance.md",
    )
    args = parser.parse_args(argv)

    if args.quick:
        s = h.Settings(rounds=args.rounds or 2, loop_ms=2.0)
        breakers, calls, peer_calls, per_thread = 1_000, 20_000, 5_000, 2
    else:
        s = h.Settings(rounds=args.rounds or 15, loop_ms=20.0)
        breakers, calls, peer_calls, per_thread = 10_000, 1_000_000, 100_000, 10

    started = time.perf_counter()
    pipe = pipeline()
    timing: list[h.Row] = []
    for bench in (
        lambda: closed_sync(s, pipe),
        lambda: closed_async(s, pipe),
        lambda: open_sync(s),
        lambda: open_async(s),
        lambda: retry_sync(s),
        lambda: retry_async(s),
    ):
        timing += bench()
    memory = memory_rows(breakers) + growth_rows(calls, peer_calls)
    memory += concurrency_rows(THREADS, per_thread)
    took = time.perf_counter() - started

    title = f"interlink resilience core vs peers ({s.rounds} rounds, min per contender)"
    h.print_table(title, timing)
    h.print_table("memory and concurrency", memory, MEM_HEADERS)
    failed = [r for r in timing + memory if r.failed]
    print(f"{len(failed)} target(s) missed; run took {took:.0f} s")

    text = rep.results_text(
        f"took {took:.0f} s.", h.to_markdown(timing), h.to_markdown(memory, MEM_HEADERS)
    )
    return rep.publish("resilience", text, args, len(failed))


if __name__ == "__main__":
    raise SystemExit(main())
