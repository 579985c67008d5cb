"""Shared pieces for the gRPC tests (imported by them; not a test module): the example API, a
servicer that fails on cue, and real ``grpc.aio`` servers on loopback (port 0)."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the example's generated code imports `examples.proto`
    sys.path.insert(0, str(ROOT))

from examples.proto import food_pb2, food_pb2_grpc  # noqa: E402

from interlink import remaining  # noqa: E402
from interlink.context import CORRELATION_HEADER, correlation_id  # noqa: E402

__all__ = ["food_pb2", "food_pb2_grpc"]

#: Reconnect fast after "server down", so recovery tests take milliseconds, not seconds.
FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
]

GET_MENU = "/food.v1.MenuService/GetMenu"
PLACE_ORDER = "/food.v1.PricingService/PlaceOrder"


@dataclass(frozen=True)
class Fail:
    """Answer with this status (and trailing metadata)."""

    code: grpc.StatusCode
    trailing: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Delay:
    """Wait this long, then answer OK."""

    seconds: float


@dataclass
class Hit:
    """One request as the servicer saw it."""

    method: str
    metadata: dict[str, str]
    time_remaining: float | None
    deadline_left: float | None
    correlation_id: str | None


@dataclass
class Faulty(food_pb2_grpc.MenuServiceServicer, food_pb2_grpc.PricingServiceServicer):
    """Serves the example API, answering each request with the next scripted action
    (``Fail``, ``Delay``, or None for OK) and then ``default``; records every hit."""

    script: deque[Fail | Delay | None] = field(default_factory=deque)
    default: Fail | Delay | None = None
    hits: list[Hit] = field(default_factory=list)

    @classmethod
    def of(cls, *script: Fail | Delay | None, default: Fail | Delay | None = None) -> Faulty:
        return cls(deque(script), default)

    async def _act(self, method: str, context: Any) -> None:
        self.hits.append(
            Hit(
                method,
                {k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
                context.time_remaining(),
                remaining(),
                correlation_id(),
            )
        )
        action = self.script.popleft() if self.script else self.default
        if isinstance(action, Fail):
            await context.abort(action.code, "injected", action.trailing)
        elif isinstance(action, Delay):
            await asyncio.sleep(action.seconds)

    async def GetMenu(self, request: Any, context: Any) -> Any:
        await self._act(GET_MENU, context)
        return food_pb2.Menu(restaurant_id=request.restaurant_id)

    async def ListItems(self, request: Any, context: Any) -> Any:
        await self._act("/food.v1.MenuService/ListItems", context)
        for n in range(3):
            yield food_pb2.Item(id=str(n), name=f"item {n}", price_cents=100 * n)

    async def Quote(self, request: Any, context: Any) -> Any:
        await self._act("/food.v1.PricingService/Quote", context)
        return food_pb2.PriceQuote(total_cents=100, currency="EUR")

    async def PlaceOrder(self, request: Any, context: Any) -> Any:
        await self._act(PLACE_ORDER, context)
        return food_pb2.Order(order_id="o-1", total_cents=100)


def add_servicer(servicer: Any, server: Any) -> None:
    """Register ``servicer`` for the example services it implements."""
    food_pb2_grpc.add_MenuServiceServicer_to_server(servicer, server)
    if isinstance(servicer, food_pb2_grpc.PricingServiceServicer):
        food_pb2_grpc.add_PricingServiceServicer_to_server(servicer, server)


@asynccontextmanager
async def serving(
    servicer: Any, *, interceptors: Iterable[Any] = (), port: int = 0
) -> AsyncIterator[int]:
    """A ``grpc.aio`` server for ``servicer`` on 127.0.0.1; yields its port."""
    server = grpc.aio.server(interceptors=list(interceptors))
    add_servicer(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(None)


def menu_request(restaurant: str = "r1") -> Any:
    return food_pb2.MenuRequest(restaurant_id=restaurant)


def trailing_id(metadata: Any) -> str | None:
    """The correlation id echoed in (trailing) metadata."""
    for key, value in metadata or ():
        if key == CORRELATION_HEADER:
            return str(value)
    return None
