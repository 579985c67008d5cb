"""The same system in one process (``interlink up --monolith``): memory broker and registry,
gRPC to the servicers without sockets, the same service code; the same scenario both ways gives
the same outcome."""

from __future__ import annotations

import asyncio
import os

import pytest
from examples.food_delivery import runtime, scenarios

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def shape(outcome: scenarios.Outcome) -> dict[str, object]:
    """What must not depend on how the services are deployed."""
    final = outcome.final
    declined = {oid for oid in outcome.accepted if runtime.share(oid, 0.3)}
    return {
        # (a few 504s are the 100 ms budget on a loaded machine, not a difference)
        "requests answered 202": all(p.success >= 0.95 for p in outcome.phases),
        "declined are exactly the cancelled": final["payment"]["declined"]
        == final["compensated"]
        == len(declined),
        "cancelled customers told": final["notification"]["cancelled"]["orders"]
        == final["compensated"],
        "every confirmed order final": final["confirmed_final"] == final["confirmed"],
        "in limbo": final["active"] + final["parked"],
        "double charges": final["payment"]["double_charges"],
        "dead letters": final["dlq"],
        "checks": [ok for _, ok in outcome.checks],
    }


def test_payment_declines_same_outcome_split_and_monolith() -> None:
    """payment-declines as six processes and as one: the same outcome, shape for shape."""
    before = dict(os.environ)
    monolith = asyncio.run(scenarios.run("payment-declines", fast=True, monolith=True))
    assert dict(os.environ) == before  # the monolith puts the environment back
    split = asyncio.run(scenarios.run("payment-declines", fast=True))
    assert len(monolith.accepted) > 30
    assert shape(monolith) == shape(split)
    assert shape(monolith)["checks"] == [True] * len(monolith.checks)
