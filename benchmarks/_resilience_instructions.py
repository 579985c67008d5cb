"""CPU instructions per call of the resilience core and its fastest peer, counted by valgrind.

Time on a shared machine swings by tens of per cent between runs; instructions counted by
``valgrind --tool=callgrind`` repeat to a fraction of a per cent, so this is the figure to
decide a design by. Each contender runs in its own process twice (5,000 and 25,000 calls) and
the difference is divided by 20,000, which cancels the interpreter's start-up and imports.
Overheads are over the bare call of the same shape (``f()``, ``await af()``, each inside
``try``/``except`` for the rejection rows); ratios are to circuitbreaker, the fastest peer of
``benchmarks/resilience.py``.

Usage: ``python benchmarks/_resilience_instructions.py`` (needs ``valgrind``; takes minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _harness as h

#: (row, interlink contender, peer contender, bare contender, target ratio)
ROWS = [
    ("breaker closed, sync: @breaker", "deco", "cb", "bare", 0.5),
    ("breaker closed, async: @breaker", "adeco", "acb", "abare", 0.5),
    ("breaker OPEN rejection, sync: @breaker", "open", "cbopen", "tbare", 0.5),
    ("breaker OPEN rejection, async: @breaker", "aopen", "acbopen", "atbare", 0.5),
    ("pipeline (timeout+retry+breaker+bulkhead), sync: .call", "pipe", "cb", "bare", 1.5),
    ("pipeline (timeout+retry+breaker+bulkhead), async: .acall", "apipe", "acb", "abare", 1.5),
]


def f() -> int:
    return 1


async def af() -> int:
    return 1


def _tripped(fn: Callable[..., Any]) -> Callable[..., Any]:
    from interlink import CircuitBreaker

    breaker = CircuitBreaker("bench", minimum_calls=1, cooldown=1e9)
    with contextlib.suppress(ZeroDivisionError):
        breaker.call(lambda: 1 / 0)
    return breaker(fn)


def _peer_tripped(is_async: bool) -> Callable[..., Any]:
    import circuitbreaker

    def bad() -> None:
        raise ZeroDivisionError

    async def abad() -> None:
        raise ZeroDivisionError

    peer = circuitbreaker.CircuitBreaker(failure_threshold=1, recovery_timeout=1e9)
    wrapped = peer(abad if is_async else bad)
    try:
        if is_async:
            asyncio.run(wrapped())
        else:
            wrapped()
    except ZeroDivisionError:
        pass
    return wrapped  # type: ignore[no-any-return]


def _contender(name: str) -> tuple[Callable[[], Any], bool, bool]:
    """(the zero-argument call, is it async, does it raise)"""
    import circuitbreaker

    from interlink import Bulkhead, CircuitBreaker, Pipeline, Retry, Timeout

    pipe = Pipeline(
        timeout=Timeout(5.0),
        retry=Retry(3),
        breaker=CircuitBreaker("bench"),
        bulkhead=Bulkhead(100),
    )
    table: dict[str, tuple[Callable[[], Any], bool, bool]] = {
        "bare": (f, False, False),
        "abare": (af, True, False),
        "tbare": (f, False, True),
        "atbare": (af, True, True),
        "deco": (CircuitBreaker("bench")(f), False, False),
        "adeco": (CircuitBreaker("bench")(af), True, False),
        "cb": (circuitbreaker.circuit(f), False, False),
        "acb": (circuitbreaker.circuit(af), True, False),
        "open": (_tripped(f), False, True),
        "aopen": (_tripped(af), True, True),
        "cbopen": (_peer_tripped(False), False, True),
        "acbopen": (_peer_tripped(True), True, True),
        "pipe": (lambda: pipe.call(f), False, False),
        "apipe": (lambda: pipe.acall(af), True, False),
    }
    return table[name]


def child(name: str, n: int) -> None:
    """Run ``n`` calls of contender ``name`` (under valgrind)."""
    fn, is_async, raises = _contender(name)
    if is_async:

        async def loop() -> None:
            for _ in range(n):
                try:
                    await fn()
                except Exception:
                    if not raises:
                        raise

        asyncio.run(loop())
        return
    for _ in range(n):
        try:
            fn()
        except Exception:
            if not raises:
                raise


def _instructions(name: str, n: int) -> int:
    return h.callgrind_instructions([sys.executable, __file__, "--child", name, str(n)])


def per_call(name: str) -> float:
    """Instructions per call of contender ``name``."""
    return (_instructions(name, 25_000) - _instructions(name, 5_000)) / 20_000


def main() -> None:
    names = sorted({n for row in ROWS for n in row[1:4]})
    with ThreadPoolExecutor(2) as pool:
        counts = dict(zip(names, pool.map(per_call, names), strict=True))
    print("| benchmark | interlink overhead (instr/call) | circuitbreaker | ratio | target |")
    print("|---|---:|---:|---:|---|")
    for row, ours, peer, bare, target in ROWS:
        mine = counts[ours] - counts[bare]
        theirs = counts[peer] - counts[bare]
        ratio = mine / theirs
        verdict = "pass" if ratio <= target else "FAIL"
        print(f"| {row} | {mine:,.0f} | {theirs:,.0f} | {ratio:.2f} | <= {target:g} {verdict} |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
