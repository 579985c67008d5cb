"""menu: the restaurant's items and their availability, over gRPC (``MenuService.GetMenu``).

Read-only and cheap, so the order service caches the last good answer and serves it when this
service is down (a breaker and a cached fallback on the caller's side).
"""

from __future__ import annotations

import asyncio

import grpc
from examples.food_delivery import runtime
from examples.proto import food_pb2, food_pb2_grpc

#: The catalog: restaurant -> (item id, name, price in cents).
CATALOG = {
    "luigis": [
        ("margherita", "Pizza Margherita", 900),
        ("diavola", "Pizza Diavola", 1100),
        ("tiramisu", "Tiramisu", 550),
        ("lemonade", "Lemonade", 300),
    ],
    "sakura": [
        ("ramen", "Shoyu Ramen", 1250),
        ("gyoza", "Gyoza (6)", 650),
    ],
}


class Menu(food_pb2_grpc.MenuServiceServicer):
    """``GetMenu``: the items of one restaurant; NOT_FOUND for a restaurant nobody knows."""

    def __init__(self, chaos: runtime.Chaos) -> None:
        self.chaos = chaos
        self.calls = 0

    async def GetMenu(
        self, request: food_pb2.MenuRequest, context: grpc.aio.ServicerContext
    ) -> food_pb2.Menu:
        self.calls += 1
        delay = self.chaos.get("slow_ms")
        if delay:
            await asyncio.sleep(delay / 1000)
        items = CATALOG.get(request.restaurant_id)
        if items is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown restaurant")
        return food_pb2.Menu(
            restaurant_id=request.restaurant_id,
            items=[food_pb2.Item(id=i, name=n, price_cents=p) for i, n, p in items or ()],
        )


async def main(stop: asyncio.Event | None = None) -> None:
    """Serve the menu over gRPC, registered in discovery, with an admin HTTP port."""
    settings = runtime.Settings.from_env("menu")
    runtime.configure_logging("menu")
    menu = Menu(runtime.Chaos(settings.state_dir, "menu"))
    server = runtime.grpc_server(settings)
    food_pb2_grpc.add_MenuServiceServicer_to_server(menu, server)

    async def stats() -> dict[str, int]:
        return {"calls": menu.calls}

    await runtime.serve_grpc_service(settings, server, stats, stop)


if __name__ == "__main__":
    runtime.run(main)
