"""Choreography: the order -> payment flow with events, outboxes and inboxes, no orchestrator.

Each service owns its database. A handler changes its state and writes the event announcing it
in ONE transaction (the outbox), and records the id of the message it is handling in that same
transaction (the inbox), so a redelivered message changes nothing. Each service runs a relay
that publishes its outbox. Nobody coordinates the flow; each service reacts to the others'
events:

    orders    POST /orders   -> order CONFIRMED          + event orders.placed
    payments  orders.placed  -> payment AUTHORIZED       + event payments.authorized
                             or payment DECLINED         + event payments.declined
    orders    payments.declined -> order CANCELLED       + event orders.cancelled
    notifier  orders.cancelled  -> "sorry" message to the customer

Run it: ``python examples/choreography/app.py`` (SQLite files in a temporary folder, the
embedded SQLite broker; nothing to install or start). Order 3 is declined and cancelled.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interlink.messaging import Broker, Envelope
from interlink.outbox import Outbox, OutboxRelay

DECLINE_OVER = 100  # the payment provider declines totals above this


class Service:
    """One service's database: its tables, its outbox and its inbox."""

    def __init__(self, path: Path, schema: list[str]) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.outbox = Outbox()
        self.outbox.create_tables(self.db)
        for sql in [*schema, "CREATE TABLE IF NOT EXISTS inbox (message_id TEXT PRIMARY KEY)"]:
            self.db.execute(sql)

    def handle_once(self, message_id: str, work: Callable[[sqlite3.Connection], None]) -> bool:
        """Run ``work`` and record ``message_id`` in one transaction; False if already done."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            seen = (
                self.db.execute("INSERT OR IGNORE INTO inbox VALUES (?)", (message_id,)).rowcount
                == 0
            )
            if not seen:
                work(self.db)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return not seen

    def relay(self, broker: Broker) -> OutboxRelay:
        return OutboxRelay(f"sqlite:///{self.path}", broker, poll_interval=0.02)


def body(env: Envelope) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(env.payload)
    return data


def build(folder: Path, broker: Broker) -> tuple[Service, Service, list[str]]:
    orders = Service(
        folder / "orders.db",
        ["CREATE TABLE orders (id TEXT PRIMARY KEY, total INTEGER, status TEXT)"],
    )
    payments = Service(
        folder / "payments.db",
        ["CREATE TABLE payments (order_id TEXT PRIMARY KEY, status TEXT)"],
    )
    sent: list[str] = []

    @broker.subscriber("orders.placed", group="payments")
    async def charge(env: Envelope) -> None:
        order = body(env)

        def work(db: sqlite3.Connection) -> None:
            ok = order["total"] <= DECLINE_OVER
            status = "AUTHORIZED" if ok else "DECLINED"
            db.execute("INSERT INTO payments VALUES (?, ?)", (order["id"], status))
            topic = "payments.authorized" if ok else "payments.declined"
            payments.outbox.add(db, topic, json.dumps(order).encode(), key=order["id"])

        payments.handle_once(env.id, work)

    @broker.subscriber("payments.declined", group="orders")
    async def cancel(env: Envelope) -> None:
        order = body(env)

        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE orders SET status='CANCELLED' WHERE id=?", (order["id"],))
            orders.outbox.add(db, "orders.cancelled", json.dumps(order).encode(), key=order["id"])

        orders.handle_once(env.id, work)

    @broker.subscriber("orders.cancelled", group="notifier", idempotent=True)
    async def notify(env: Envelope) -> None:
        sent.append(f"to customer: order {body(env)['id']} was cancelled, payment declined")

    return orders, payments, sent


def place_order(orders: Service, order_id: str, total: int) -> None:
    """The POST /orders handler: answered "confirmed" at once; payment happens later."""
    with orders.db:
        orders.db.execute("BEGIN IMMEDIATE")
        orders.db.execute("INSERT INTO orders VALUES (?, ?, 'CONFIRMED')", (order_id, total))
        order = {"id": order_id, "total": total}
        orders.outbox.add(orders.db, "orders.placed", json.dumps(order).encode(), key=order_id)


async def main(folder: Path) -> dict[str, Any]:
    broker = Broker.from_url(f"sqlite:///{folder / 'broker.db'}")
    orders, payments, sent = build(folder, broker)
    relays = [orders.relay(broker), payments.relay(broker)]
    async with broker:
        tasks = [asyncio.create_task(r.run()) for r in relays]
        for n, total in enumerate([20, 45, 250], 1):
            place_order(orders, f"order-{n}", total)
        for _ in range(500):
            if sent:
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = {
        "orders": orders.db.execute("SELECT id, status FROM orders ORDER BY id").fetchall(),
        "payments": payments.db.execute(
            "SELECT order_id, status FROM payments ORDER BY order_id"
        ).fetchall(),
        "notifications": sent,
    }
    orders.db.close()
    payments.db.close()
    return result


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(main(Path(tmp)))
    for name, rows in result.items():
        print(f"{name}:")
        for row in rows:
            print("   ", row)
