"""No retry storm: under 100 % downstream failure, the shared budget caps what reaches the
downstream at (1 + ratio) x incoming + the budget's floor, whatever the per-call retries."""

from __future__ import annotations

import asyncio

from http_support import FaultApp

from interlink import CircuitOpenError
from interlink.http import AsyncClient, ServicePolicies

INCOMING = 200
RATIO = 0.2
FLOOR_PER_SECOND = 1.0
TTL = 10.0


def send_all(base: str, path: str, policies: ServicePolicies) -> int:
    """Send INCOMING GETs from 20 tasks; returns how many the breaker rejected."""
    rejected = 0

    async def go() -> None:
        nonlocal rejected
        async with AsyncClient(base, policies=policies) as client:
            queue = list(range(INCOMING))

            async def worker() -> None:
                nonlocal rejected
                while queue:
                    queue.pop()
                    try:
                        assert (await client.get(path)).is_failure
                    except CircuitOpenError:
                        rejected += 1

            await asyncio.gather(*(worker() for _ in range(20)))

    asyncio.run(go())
    return rejected


def test_budget_caps_load_under_total_failure(faults: tuple[FaultApp, str]) -> None:
    """3 retries per call would be 4x the load; the budget keeps it under 1.2x + 10."""
    app, base = faults
    path = "/status/599"
    policies = ServicePolicies(
        retries=3,
        backoff=0.0005,
        max_backoff=0.001,
        budget_ratio=RATIO,
        budget_min_per_second=FLOOR_PER_SECOND,
        budget_ttl=TTL,
        breaker=False,
    )
    before = app.hits[path]
    send_all(base, path, policies)
    reached = app.hits[path] - before
    assert INCOMING < reached <= (1 + RATIO) * INCOMING + FLOOR_PER_SECOND * TTL


def test_without_a_budget_retries_multiply_the_load(faults: tuple[FaultApp, str]) -> None:
    """The contrast: no budget, no breaker, 3 retries: every call is sent four times."""
    app, base = faults
    path = "/status/598"
    policies = ServicePolicies(
        retries=3, backoff=0.0005, max_backoff=0.001, budget_ratio=None, breaker=False
    )
    before = app.hits[path]
    send_all(base, path, policies)
    assert app.hits[path] - before == 4 * INCOMING


def test_breaker_and_budget_together_cut_load_further(faults: tuple[FaultApp, str]) -> None:
    """With the breaker on, most calls are rejected before the budget is even asked."""
    app, base = faults
    path = "/status/597"
    policies = ServicePolicies(
        retries=3,
        backoff=0.0005,
        max_backoff=0.001,
        budget_ratio=RATIO,
        budget_min_per_second=FLOOR_PER_SECOND,
        budget_ttl=TTL,
        minimum_calls=10,
        cooldown=30.0,
    )
    before = app.hits[path]
    rejected = send_all(base, path, policies)
    assert rejected > 0.8 * INCOMING
    assert app.hits[path] - before < 0.2 * INCOMING
