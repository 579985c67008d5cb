"""The documented choreography example runs and ends where its README says."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

from interlink.messaging import Broker

APP = Path(__file__).resolve().parents[2] / "examples" / "choreography" / "app.py"


def test_choreography_example_settles(tmp_path: Path) -> None:
    """Orders 1-2 paid and confirmed; order 3 declined, cancelled, customer notified."""
    spec = importlib.util.spec_from_file_location("choreography_app", APP)
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    result = asyncio.run(asyncio.wait_for(app.main(tmp_path), 30))
    assert result["orders"] == [
        ("order-1", "CONFIRMED"),
        ("order-2", "CONFIRMED"),
        ("order-3", "CANCELLED"),
    ]
    assert result["payments"] == [
        ("order-1", "AUTHORIZED"),
        ("order-2", "AUTHORIZED"),
        ("order-3", "DECLINED"),
    ]
    assert result["notifications"] == ["to customer: order order-3 was cancelled, payment declined"]


def test_choreography_inbox_absorbs_a_redelivered_event(tmp_path: Path) -> None:
    """The same orders.placed delivered twice: one payment, one event in the outbox."""
    spec = importlib.util.spec_from_file_location("choreography_app", APP)
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    async def main() -> tuple[int, int]:
        broker = Broker.from_url("memory://")
        orders, payments, _ = app.build(tmp_path, broker)
        order = json.dumps({"id": "order-9", "total": 10}).encode()
        async with broker:
            for _ in range(2):  # a redelivery: same message id
                await broker.publish("orders.placed", order, key="order-9", message_id="m-9")
            for _ in range(200):
                done = payments.db.execute("SELECT count(*) FROM inbox").fetchone()[0]
                if done:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # room for the second delivery to be handled
        counts = (
            payments.db.execute("SELECT count(*) FROM payments").fetchone()[0],
            payments.db.execute("SELECT count(*) FROM interlink_outbox").fetchone()[0],
        )
        orders.db.close()
        payments.db.close()
        return counts

    assert asyncio.run(asyncio.wait_for(main(), 10)) == (1, 1)
