"""The same reference system, unchanged, on this machine's real servers: NATS JetStream for the
broker, PostgreSQL for every service's database, the outboxes and the saga store, Redis for
discovery. Everything is chosen by environment variables, as an operator would."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from examples.food_delivery import runtime, scenarios

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


async def _drop_tables(namespace: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{namespace}%"
        )
        for row in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        await conn.close()


def test_payment_declines_on_nats_postgres_and_redis() -> None:
    """payment-declines on NATS + PostgreSQL + Redis: the declined share cancelled and
    notified, the rest dispatched, none in limbo, no double charge."""
    namespace = f"food{uuid.uuid4().hex[:8]}"
    env = {
        "FOOD_NAMESPACE": namespace,
        "INTERLINK_BROKER": "nats://127.0.0.1:4222",
        "INTERLINK_REGISTRY": f"redis://127.0.0.1:6379/0?prefix={namespace}:discovery:",
        "INTERLINK_SAGA_STORE": POSTGRES,
        "FOOD_ORDER_DB": POSTGRES,
        "FOOD_PAYMENT_DB": POSTGRES,
        "FOOD_NOTIFICATION_DB": POSTGRES,
    }
    try:
        outcome = asyncio.run(scenarios.run("payment-declines", fast=True, env=env))
    finally:
        asyncio.run(_drop_tables(namespace))
    final = outcome.final
    declined = {oid for oid in outcome.accepted if runtime.share(oid, 0.3)}
    assert len(outcome.accepted) > 30
    assert final["payment"]["declined"] == len(declined)
    assert final["compensated"] == len(declined)
    assert final["notification"]["cancelled"]["orders"] == len(declined)
    assert final["confirmed_final"] == final["confirmed"] == len(outcome.accepted)
    assert final["active"] == 0
    assert final["parked"] == 0, final["parked_why"]
    assert final["payment"]["double_charges"] == 0
    assert final["dlq"] == 0
