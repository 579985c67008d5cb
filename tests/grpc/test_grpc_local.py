"""interlink.grpc.local: generated servicers and stubs in one process, through interlink's
client pipeline, with network semantics (statuses, deadlines, a stopped server) and no socket."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_helpers import food_pb2, food_pb2_grpc

from interlink import deadline, remaining
from interlink import grpc as ilgrpc
from interlink.context import correlation_id, use_correlation_id
from interlink.grpc.local import LocalServer, channel_factory, local_channel


class Menu(food_pb2_grpc.MenuServiceServicer):
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, float | None]] = []

    async def GetMenu(self, request: Any, context: Any) -> Any:
        self.seen.append((correlation_id(), remaining()))
        if request.restaurant_id == "nowhere":
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown restaurant")
        if request.restaurant_id == "slow":
            await asyncio.sleep(1.0)
        request.restaurant_id = "mutated"  # must not leak back to the caller's object
        return food_pb2.Menu(restaurant_id="r1", items=[food_pb2.Item(id="pizza")])

    async def ListItems(self, request: Any, context: Any) -> Any:
        for name in ("a", "b"):
            yield food_pb2.Item(id=name)


async def serve(address: str) -> tuple[LocalServer, Menu]:
    server = LocalServer(interceptors=[ilgrpc.AioServerInterceptor()])
    menu = Menu()
    food_pb2_grpc.add_MenuServiceServicer_to_server(menu, server)
    assert server.add_insecure_port(address) == int(address.rsplit(":", 1)[1])
    await server.start()
    return server, menu


def test_a_call_reaches_the_servicer_with_context_and_copies() -> None:
    """A unary call answers; the servicer sees the caller's correlation id and deadline, and
    works on its own copy of the request."""

    async def main() -> None:
        server, menu = await serve("127.0.0.1:61001")
        stub = food_pb2_grpc.MenuServiceStub(local_channel("127.0.0.1:61001"))
        request = food_pb2.MenuRequest(restaurant_id="r1")
        with use_correlation_id("cid-1"), deadline(2.0):
            reply = await stub.GetMenu(request)
        assert reply.items[0].id == "pizza"
        assert request.restaurant_id == "r1"
        cid, left = menu.seen[0]
        assert cid == "cid-1"
        assert left is not None
        assert 0 < left <= 2.0
        items = [i.id async for i in stub.ListItems(request)]
        assert items == ["a", "b"]
        await server.stop()

    asyncio.run(main())


def test_statuses_deadlines_and_a_stopped_server_look_like_the_network() -> None:
    """abort -> that status; a timeout -> DEADLINE_EXCEEDED; a stopped server -> UNAVAILABLE,
    which interlink's pipeline retries and its breaker counts."""

    async def main() -> None:
        server, _ = await serve("127.0.0.1:61002")
        service = ilgrpc.service("menu-local", retries=1, backoff=0.001)
        channel = ilgrpc.direct_channel(
            "127.0.0.1:61002", service, channel_factory=channel_factory()
        )
        stub = food_pb2_grpc.MenuServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetMenu(food_pb2.MenuRequest(restaurant_id="nowhere"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "unknown restaurant"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetMenu(food_pb2.MenuRequest(restaurant_id="slow"), timeout=0.05)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetMenu(food_pb2.MenuRequest(restaurant_id="r1"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        server2, _ = await serve("127.0.0.1:61002")  # back on the same address
        reply = await stub.GetMenu(food_pb2.MenuRequest(restaurant_id="r1"))
        assert reply.restaurant_id == "r1"
        await server2.stop()

    asyncio.run(main())


def test_an_address_is_bound_once_and_others_fall_back_to_a_real_channel() -> None:
    """Two local servers cannot share an address; the factory returns a real channel for
    addresses nobody serves in this process."""

    async def main() -> None:
        server, _ = await serve("127.0.0.1:61003")
        with pytest.raises(ValueError, match="served in this process already"):
            LocalServer().add_insecure_port("127.0.0.1:61003")
        real = channel_factory()("127.0.0.1:61004")
        assert isinstance(real, grpc.aio.Channel)
        await real.close()
        await server.stop()

    asyncio.run(main())
