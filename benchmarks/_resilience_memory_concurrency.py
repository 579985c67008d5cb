"""The untimed rows of the resilience claim: bytes per breaker at rest and growth over many
calls (tracemalloc), and the wall time of threads calling through one breaker (no lock held
while the wrapped call runs).

Its own module: a second table, with its own headers and targets, beside the timing cases in
``resilience.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import _harness as h  # a script folder, not a package
from _resilience_contenders import (
    _aiobreaker,
    _circuitbreaker,
    _pybreaker,
    _tripped_interlink,
    f,
    sync_breakers,
)

from interlink.resilience.breaker import CircuitBreaker

BYTES_PER_BREAKER_TARGET = 300
GROWTH_TOLERANCE = 1024  # bytes over the whole loop: tracemalloc's own noise, not a leak
THREADS, SLEEP = 8, 0.01
WALL_TARGET = 1.5  # x the time of one thread's calls made back to back

MEM_HEADERS = ("benchmark", "contender", "measured", "ratio to smallest peer", "target", "")


def memory_rows(count: int) -> list[h.Row]:
    """Bytes per breaker at rest: ``count`` breakers kept alive, traced by tracemalloc."""
    import purgatory

    factory = purgatory.SyncCircuitBreakerFactory()
    names = [f"b{i}" for i in range(-1, count)]
    makers: list[tuple[str, str, Callable[[int], Any]]] = [
        ("interlink", "interlink", lambda i: CircuitBreaker(names[i + 1])),
        ("pybreaker", "peer", lambda i: _pybreaker()),
        # a purgatory breaker lives in its factory's repository, keyed by name
        ("purgatory", "peer", lambda i: factory.get_breaker(names[i + 1])),
        ("aiobreaker", "peer", lambda i: _aiobreaker()),
        ("circuitbreaker", "peer", lambda i: _circuitbreaker()),
    ]
    sizes = [(name, role, h.bytes_per_object(make, count)) for name, role, make in makers]
    smallest = min(size for _, role, size in sizes if role == "peer")
    rows = []
    for name, role, size in sizes:
        verdict = ""
        target = ""
        if role == "interlink":
            target = f"<= {BYTES_PER_BREAKER_TARGET} B"
            verdict = "pass" if size <= BYTES_PER_BREAKER_TARGET else "FAIL"
        rows.append(
            h.Row(
                f"memory per breaker at rest ({count:,} kept)",
                name,
                f"{size:.0f} B",
                f"{size / smallest:.2f}",
                target,
                verdict,
            )
        )
    return rows


def growth_rows(calls: int, peer_calls: int) -> list[h.Row]:
    """Traced memory still held after many closed calls, and many rejections while OPEN."""
    rows = []
    for tripped, label in ((False, "closed calls"), (True, "rejections while OPEN")):
        b = _tripped_interlink() if tripped else CircuitBreaker("bench")
        contenders = [("interlink @breaker", b(f), calls, True)]
        contenders += [(n, w, peer_calls, False) for n, w in sync_breakers(f, tripped=tripped)]
        for name, wrapped, n, ours in contenders:
            grew = h.growth(wrapped, n, catch=tripped)
            verdict = target = ""
            if ours:
                target = f"<= {GROWTH_TOLERANCE} B total"
                verdict = "pass" if grew <= GROWTH_TOLERANCE else "FAIL"
            rows.append(
                h.Row(
                    f"memory growth over {label}",
                    f"{name} ({n:,} calls)",
                    f"{grew:+,} B ({grew / n:+.2f} B/call)",
                    "",
                    target,
                    verdict,
                )
            )
    return rows


def concurrency_rows(threads: int, calls: int) -> list[h.Row]:
    """Wall time of ``threads`` threads x ``calls`` calls of a 10 ms sleep through each breaker."""

    def slow() -> None:
        time.sleep(SLEEP)

    ideal = calls * SLEEP
    rows = []
    contenders = [("interlink @breaker", CircuitBreaker("bench")(slow), True)]
    contenders += [(n, w, False) for n, w in sync_breakers(slow, tripped=False)]
    for name, wrapped, ours in contenders:
        took = h.wall_time_threads(wrapped, threads, calls)
        verdict = target = ""
        if ours:
            target = f"<= {WALL_TARGET * ideal:.2f} s"
            verdict = "pass" if took <= WALL_TARGET * ideal else "FAIL"
        rows.append(
            h.Row(
                f"{threads} threads x {calls} calls of {SLEEP * 1000:.0f} ms (ideal {ideal:.2f} s)",
                name,
                f"{took:.3f} s",
                f"{took / ideal:.1f}x ideal",
                target,
                verdict,
            )
        )
    return rows
