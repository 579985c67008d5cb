"""REST JSON to gRPC unary against the example food service, descriptors from the generated
module and from server reflection; gRPC statuses become HTTP statuses with JSON errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from proxy_support import LoopThread, start_proxy

from interlink.gateway import ConfigError, build_table, parse_config

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the generated code imports `examples.proto`
    sys.path.insert(0, str(ROOT))

from examples.proto import food_pb2, food_pb2_grpc  # noqa: E402

SEEN: list[dict[str, str]] = []


class Menu(food_pb2_grpc.MenuServiceServicer):
    async def GetMenu(self, request: Any, context: Any) -> Any:
        SEEN.append(dict(context.invocation_metadata()))
        if request.restaurant_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no restaurant 'missing'")
        if request.restaurant_id == "down":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try later")
        return food_pb2.Menu(
            restaurant_id=request.restaurant_id,
            items=[food_pb2.Item(id="1", name="Pizza", price_cents=1250)],
        )


class Pricing(food_pb2_grpc.PricingServiceServicer):
    async def Quote(self, request: Any, context: Any) -> Any:
        return food_pb2.PriceQuote(total_cents=100 * len(request.item_ids), currency="EUR")


async def _serve() -> tuple[grpc.aio.Server, int]:
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server()
    food_pb2_grpc.add_MenuServiceServicer_to_server(Menu(), server)
    food_pb2_grpc.add_PricingServiceServicer_to_server(Pricing(), server)
    names = (
        food_pb2.DESCRIPTOR.services_by_name["MenuService"].full_name,
        food_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _config(port: int, descriptors: str = "examples.proto.food_pb2") -> str:
    return f"""
listen: 127.0.0.1:0
routes:
  - name: menu
    match: {{path: "/menus/{{restaurant_id}}", methods: [GET]}}
    grpc:
      target: 127.0.0.1:{port}
      method: food.v1.MenuService/GetMenu
      descriptors: {descriptors}
  - name: quote
    match: {{path: /quotes, methods: [POST]}}
    grpc:
      target: 127.0.0.1:{port}
      method: food.v1.PricingService/Quote
      descriptors: reflection
"""


@pytest.fixture(scope="module")
def base(loop_thread: LoopThread) -> Iterator[str]:
    server, grpc_port = loop_thread.run(_serve())
    table = build_table(parse_config(_config(grpc_port)))
    _, proxy_server, port = loop_thread.run(start_proxy(table))
    yield f"http://127.0.0.1:{port}"
    loop_thread.close_server(proxy_server)
    loop_thread.run(server.stop(None))


def test_get_with_path_parameter(base: str) -> None:
    """GET /menus/r1 calls GetMenu(restaurant_id='r1') and answers its JSON."""
    response = httpx.get(base + "/menus/r1", headers={"x-request-id": "grpc-1"}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "restaurant_id": "r1",
        "items": [{"id": "1", "name": "Pizza", "price_cents": "1250"}],
    }
    assert response.headers["x-request-id"] == "grpc-1"
    assert SEEN[-1]["x-request-id"] == "grpc-1"
    assert SEEN[-1]["traceparent"] == response.headers["traceparent"]


def test_post_json_through_reflection(base: str) -> None:
    """A JSON body fills the request message; descriptors come from server reflection."""
    response = httpx.post(base + "/quotes", json={"item_ids": ["a", "b", "c"]}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"total_cents": "300", "currency": "EUR"}


def test_grpc_status_maps_to_http(base: str) -> None:
    """NOT_FOUND is 404, UNAVAILABLE 503, with grpc_<code> reasons and the server's message."""
    missing = httpx.get(base + "/menus/missing", timeout=10)
    assert missing.status_code == 404
    body = missing.json()
    assert body["reason"] == "grpc_not_found"
    assert body["grpc_status"] == "NOT_FOUND"
    assert body["error"] == "no restaurant 'missing'"
    assert body["request_id"] == missing.headers["x-request-id"]
    down = httpx.get(base + "/menus/down", timeout=10)
    assert (down.status_code, down.json()["reason"]) == (503, "grpc_unavailable")


def test_bad_json_is_400(base: str) -> None:
    """A body that is not JSON, or names unknown fields: 400 bad_request."""
    for content in (b"{not json", b'{"no_such_field": 1}', b"[1, 2]"):
        response = httpx.post(base + "/quotes", content=content, timeout=10)
        assert response.status_code == 400, content
        assert response.json()["reason"] == "bad_request"


def test_unknown_method_fails_the_config() -> None:
    """A method the generated module does not define is a configuration error."""
    config = parse_config(_config(1).replace("MenuService/GetMenu", "MenuService/Nope"))
    with pytest.raises(ConfigError, match=r"routes\.0 \(menu\).*Nope"):
        build_table(config)
