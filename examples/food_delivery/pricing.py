"""pricing: totals, fees and promotions, over gRPC (``PricingService.Quote``).

No fallback on the caller's side: an order without a price must fail, fast and clearly. The
chaos switch ``fail`` makes a share of quotes answer UNAVAILABLE, to show the retry budget.
"""

from __future__ import annotations

import asyncio

import grpc
from examples.food_delivery import runtime
from examples.food_delivery.menu import CATALOG
from examples.proto import food_pb2, food_pb2_grpc

DELIVERY_FEE_CENTS = 250
#: Orders of at least this much get the delivery for free.
FREE_DELIVERY_FROM_CENTS = 3000

PRICES = {(r, item): price for r, items in CATALOG.items() for item, _, price in items}


class Pricing(food_pb2_grpc.PricingServiceServicer):
    """``Quote``: the total of a basket (an item id repeated once per unit)."""

    def __init__(self, chaos: runtime.Chaos) -> None:
        self.chaos = chaos
        self.calls = 0
        self.failed = 0

    async def Quote(
        self, request: food_pb2.QuoteRequest, context: grpc.aio.ServicerContext
    ) -> food_pb2.PriceQuote:
        self.calls += 1
        fail = self.chaos.get("fail")
        if fail and runtime.share(f"{self.calls}", fail):
            self.failed += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "pricing engine unavailable")
        total = 0
        for item in request.item_ids:
            price = PRICES.get((request.restaurant_id, item))
            if price is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown item {item!r}")
            total += price or 0
        if total < FREE_DELIVERY_FROM_CENTS:
            total += DELIVERY_FEE_CENTS
        return food_pb2.PriceQuote(total_cents=total, currency="EUR")


async def main(stop: asyncio.Event | None = None) -> None:
    """Serve pricing over gRPC, registered in discovery, with an admin HTTP port."""
    settings = runtime.Settings.from_env("pricing")
    runtime.configure_logging("pricing")
    pricing = Pricing(runtime.Chaos(settings.state_dir, "pricing"))
    server = runtime.grpc_server(settings)
    food_pb2_grpc.add_PricingServiceServicer_to_server(pricing, server)

    async def stats() -> dict[str, int]:
        return {"calls": pricing.calls, "failed": pricing.failed}

    await runtime.serve_grpc_service(settings, server, stats, stop)


if __name__ == "__main__":
    runtime.run(main)
