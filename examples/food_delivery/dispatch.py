"""dispatch: assigns a courier to a paid order, as a broker consumer of the saga's command.

Chaos switch ``no_courier``: the share of orders (chosen per order id) for which no courier is
free; the saga then refunds the payment, cancels the order and tells the customer.
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

log = logging.getLogger("food.dispatch")

COURIERS = ("ana", "bo", "chen", "dara", "eli", "femi")


def build(settings: runtime.Settings) -> tuple[Starlette, Broker]:
    """The dispatch service: its subscription and its admin app."""
    broker = Broker.from_url(settings.broker, idempotency=settings.idempotency)
    chaos = runtime.Chaos(settings.state_dir, "dispatch")
    counts = {"assigned": 0, "no_courier": 0, "released": 0}

    @broker.subscriber(settings.topic(runtime.DISPATCH_ASSIGN), group="dispatch", concurrency=16)
    async def assign(env: Envelope) -> None:
        """Pick a courier (the same one for the same order, every time) or say none is free."""
        order = json.loads(env.payload)
        order_id = order["order_id"]
        headers = reply_headers(env.headers)
        if runtime.share(f"courier:{order_id}", chaos.get("no_courier")):
            counts["no_courier"] += 1
            body = reply_body(ok=False, error="no courier available")
        else:
            counts["assigned"] += 1
            courier = COURIERS[sum(order_id.encode()) % len(COURIERS)]
            body = reply_body(ok=True, result={"courier": courier})
        log.info("order %s: %s", order_id, body.decode())
        await broker.publish(env.headers["reply-to"], body, headers=headers, key=env.key)

    @broker.subscriber(settings.topic(runtime.DISPATCH_RELEASE), group="dispatch", concurrency=16)
    async def release(env: Envelope) -> None:
        """Free the order's courier (nothing to free is fine)."""
        order = json.loads(env.payload)
        counts["released"] += 1
        log.info("order %s: courier released", order["order_id"])
        body = reply_body(ok=True, result={"released": True})
        await broker.publish(env.headers["reply-to"], body, headers=reply_headers(env.headers))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with broker:
            yield

    async def stats() -> dict[str, int]:
        return counts

    return runtime.http_app(stats, lifespan=lifespan), broker


async def main(stop: asyncio.Event | None = None) -> None:
    """Consume dispatch commands; serve health and stats; registered in discovery."""
    settings = runtime.Settings.from_env("dispatch")
    runtime.configure_logging("dispatch")
    app, _ = build(settings)
    await runtime.serve_http(settings, app, stop)


if __name__ == "__main__":
    runtime.run(main)
