"""payment: authorizes and refunds, as a broker consumer answering the order saga's commands.

Every effect is keyed by the saga's idempotency key and the order id, so a command delivered
twice (a retry, a redelivery after a crash) charges or refunds once. A refund that finds
nothing to undo records the order as void, so an authorization that arrives after the saga
gave up is refused instead of taking money for a cancelled order.

Chaos switches: ``decline`` (share of orders declined, chosen per order id), ``fail`` (share of
commands that raise, to be retried by the broker and dead-lettered at last).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

from examples.food_delivery import runtime
from starlette.applications import Starlette

from interlink.messaging import Broker, Envelope
from interlink.saga import reply_body, reply_headers

log = logging.getLogger("food.payment")


def schema(table: str) -> list[str]:
    """The payments table: one row per order, with how often money moved."""
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "amount_cents BIGINT NOT NULL, charges INTEGER NOT NULL, refunds INTEGER NOT NULL)"
    ]


class Payments:
    """The payment service's logic over its own database."""

    def __init__(self, db: runtime.Database, table: str, chaos: runtime.Chaos) -> None:
        self.db = db
        self.table = table
        self.chaos = chaos

    async def authorize(self, order_id: str, amount: int) -> tuple[bool, str]:
        """Charge ``amount`` for ``order_id`` once; (ok, reason)."""
        if runtime.share(f"fail:{order_id}", self.chaos.get("fail")):
            raise RuntimeError("payment provider unreachable")
        declined = runtime.share(order_id, self.chaos.get("decline"))
        status = "DECLINED" if declined else "AUTHORIZED"
        t = self.table
        async with self.db.transaction() as tx:
            inserted = await tx.execute(
                f"INSERT INTO {t} (order_id, status, amount_cents, charges, refunds) "
                "VALUES ($1, $2, $3, $4, 0) ON CONFLICT DO NOTHING",
                order_id,
                status,
                amount,
                0 if declined else 1,
            )
            if not inserted:
                rows = await tx.fetch(f"SELECT status FROM {t} WHERE order_id = $1", order_id)
                status = rows[0][0]
        if status == "AUTHORIZED":
            return True, "authorized"
        if status == "VOID":
            return False, "order already cancelled"
        return False, "card declined"

    async def refund(self, order_id: str) -> str:
        """Give the money back, once; record a void order when nothing was taken."""
        t = self.table
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                f"UPDATE {t} SET status = 'REFUNDED', refunds = refunds + 1 "
                "WHERE order_id = $1 AND status = 'AUTHORIZED'",
                order_id,
            )
            if changed:
                return "refunded"
            await tx.execute(
                f"INSERT INTO {t} (order_id, status, amount_cents, charges, refunds) "
                "VALUES ($1, 'VOID', 0, 0, 0) ON CONFLICT DO NOTHING",
                order_id,
            )
        return "nothing to refund"

    async def stats(self) -> dict[str, int]:
        """Payments per status, and money movements in total."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT status, COUNT(*), SUM(charges), SUM(refunds) FROM {self.table} "
                "GROUP BY status"
            )
        out = {str(status).lower(): int(n) for status, n, _, _ in rows}
        out["charges"] = sum(int(c or 0) for _, _, c, _ in rows)
        out["refunds"] = sum(int(r or 0) for _, _, _, r in rows)
        out["double_charges"] = await self._count("charges > 1")
        out["double_refunds"] = await self._count("refunds > 1")
        return out

    async def _count(self, where: str) -> int:
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT COUNT(*) FROM {self.table} WHERE {where}")
        return int(rows[0][0])


def build(settings: runtime.Settings) -> tuple[Starlette, Broker]:
    """The payment service: its broker subscriptions and its admin app."""
    broker = Broker.from_url(settings.broker, idempotency=settings.idempotency)
    table = settings.table("payments")
    payments = Payments(
        runtime.Database(settings.database), table, runtime.Chaos(settings.state_dir, "payment")
    )

    async def reply(env: Envelope, ok: bool, result: object = None, error: str = "") -> None:
        await broker.publish(
            env.headers["reply-to"],
            reply_body(ok=ok, result=result, error=error or None),
            headers=reply_headers(env.headers),
            key=env.key,
        )

    @broker.subscriber(settings.topic(runtime.PAYMENT_AUTHORIZE), group="payment", concurrency=16)
    async def authorize(env: Envelope) -> None:
        """Authorize the order's total, or decline it."""
        order = json.loads(env.payload)
        ok, reason = await payments.authorize(order["order_id"], int(order["total_cents"]))
        log.info("order %s: %s", order["order_id"], reason)
        await reply(env, ok, {"status": reason} if ok else None, "" if ok else reason)

    @broker.subscriber(settings.topic(runtime.PAYMENT_REFUND), group="payment", concurrency=16)
    async def refund(env: Envelope) -> None:
        """Refund the order (nothing to undo is fine)."""
        order = json.loads(env.payload)
        outcome = await payments.refund(order["order_id"])
        log.info("order %s: %s", order["order_id"], outcome)
        await reply(env, True, {"status": outcome})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await payments.db.open(schema(table))
        async with broker:
            yield
        await payments.db.close()

    return runtime.http_app(payments.stats, lifespan=lifespan), broker


async def main(stop: asyncio.Event | None = None) -> None:
    """Consume payment commands; serve health and stats; registered in discovery."""
    settings = runtime.Settings.from_env("payment")
    runtime.configure_logging("payment")
    app, _ = build(settings)
    await runtime.serve_http(settings, app, stop)


if __name__ == "__main__":
    runtime.run(main)
