"""The order API on the running system, through the gateway (the only public entry): a placed
order's correlation id reaches the customer's notification through the outbox, the broker and the
saga; a request without a token gets the gateway's 401 JSON with its correlation id; a customer
sees and places only their own orders; bad carts get a 4xx JSON body with the correlation id;
unknown orders a 404; the menu is read over REST from menu's gRPC service."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from examples.food_delivery import gateway
from support import until

from interlink.supervisor import Supervisor, load_system

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SYSTEM = Path(__file__).resolve().parents[2] / "examples/food_delivery/system.yaml"


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_the_order_api_end_to_end(tmp_path: Path) -> None:
    """Through the gateway: 202 + location; GET shows the saga; the notification carries the
    request's id; no token: 401 JSON; another customer's order: 404; a forged identity: 403."""

    async def main() -> None:
        system = load_system(SYSTEM, state_dir=tmp_path)
        async with Supervisor(system, output=lambda _: None) as sup:
            await sup.wait_healthy(90)
            entry = sup.entry_url
            assert entry == f"{sup.url('gateway')}/orders"
            env = sup.service_env("gateway")
            alice = {"authorization": f"Bearer {gateway.demo_token(env, 'c-7')}"}
            bob = {"authorization": f"Bearer {gateway.demo_token(env, 'c-8')}"}
            cart = {
                "customer_id": "c-7",
                "restaurant_id": "luigis",
                "items": [{"item_id": "margherita", "quantity": 2}],
            }
            status, headers, body = await asyncio.to_thread(
                call, "POST", entry, cart, {**alice, "x-request-id": "trace-me-123"}
            )
            assert status == 202, body
            assert headers["location"] == f"/orders/{body['order_id']}"
            assert headers["x-request-id"] == "trace-me-123"
            assert body["total_cents"] == 2 * 900 + 250  # delivery fee under 30 EUR
            order_id = body["order_id"]
            deadline = time.monotonic() + 60
            notes: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not notes:
                _, _, notes = await asyncio.to_thread(
                    call, "GET", f"{sup.url('notification')}/notifications?order_id={order_id}"
                )
                await asyncio.sleep(0.2)
            assert [n["kind"] for n in notes] == ["dispatched"]
            assert notes[0]["correlation_id"] == "trace-me-123"
            mine = f"{entry}/{order_id}"
            status, _, shown = await asyncio.to_thread(call, "GET", mine, None, alice)
            assert status == 200
            assert shown["status"] == "DISPATCHED"
            assert shown["saga"]["status"] == "COMPLETED"
            status, _, err = await asyncio.to_thread(call, "GET", mine, None, bob)
            assert (status, err["error"]) == (404, "not_found")  # not bob's: as if none

            # no token, a bad one: the gateway answers, in JSON, with the correlation id
            for extra in ({}, {"authorization": "Bearer not.a.token"}):
                status, headers, err = await asyncio.to_thread(call, "POST", entry, cart, extra)
                assert status == 401, err
                assert err["status"] == 401
                assert err["reason"] in ("auth_missing", "auth_invalid")
                assert err["request_id"] == headers["x-request-id"] != ""
            # an identity header from the client is dropped: bob cannot order as alice
            forged = {**bob, "x-auth-subject": "c-7"}
            status, _, err = await asyncio.to_thread(call, "POST", entry, cart, forged)
            assert (status, err["error"]) == (403, "forbidden")

            status, headers, err = await asyncio.to_thread(
                call,
                "POST",
                entry,
                {"customer_id": "c-7", "restaurant_id": "luigis", "items": []},
                alice,
            )
            assert status == 422
            assert err["error"] == "invalid_order"
            assert "items" in err["detail"]
            assert err["correlation_id"] == headers["x-request-id"]
            bad = {**cart, "items": [{"item_id": "sushi", "quantity": 1}]}
            status, _, err = await asyncio.to_thread(call, "POST", entry, bad, alice)
            assert (status, err["error"]) == (422, "invalid_order")
            assert "sushi" in err["detail"]
            status, _, err = await asyncio.to_thread(call, "GET", f"{entry}/nope", None, alice)
            assert (status, err["error"]) == (404, "not_found")

    asyncio.run(main())


def listening_on(port: int) -> set[str]:
    """The addresses a TCP socket listens on at ``port`` (from /proc/net/tcp and tcp6; an
    IPv4-mapped IPv6 address, as gRPC binds, as IPv4)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = b"".join(
                int(address[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(raw)
            mapped = getattr(ip, "ipv4_mapped", None)
            found.add(str(mapped or ip))
    return found


def test_every_service_listens_on_loopback_only(tmp_path: Path) -> None:
    """Every service's ports are on loopback only; the gateway's too unless FOOD_GATEWAY_HOST
    opens it to others (it is the one meant to be)."""

    async def main() -> None:
        system = load_system(SYSTEM, state_dir=tmp_path)
        async with Supervisor(system, output=lambda _: None) as sup:
            await sup.wait_healthy(90)
            for name, status in sup.status().items():
                for port in status["ports"].values():
                    # a gRPC port may open a little after the admin port answered
                    await until(lambda p=port: listening_on(p), 20, f"{name} on {port}")
                    assert listening_on(port) == {"127.0.0.1"}, (name, port)

    asyncio.run(main())


def test_the_menu_over_rest_from_grpc(tmp_path: Path) -> None:
    """GET /menus/{id} at the gateway is menu's gRPC GetMenu as JSON, found through discovery,
    no token needed; an unknown restaurant is gRPC NOT_FOUND as a 404 JSON error."""

    async def main() -> None:
        system = load_system(SYSTEM, state_dir=tmp_path)
        async with Supervisor(system, output=lambda _: None) as sup:
            await sup.wait_healthy(90)
            base = sup.url("gateway")
            status, headers, menu = await asyncio.to_thread(
                call, "GET", f"{base}/menus/luigis", None, {"x-request-id": "menu-1"}
            )
            assert status == 200, menu
            assert headers["x-request-id"] == "menu-1"
            assert menu["restaurant_id"] == "luigis"
            assert {i["id"]: int(i["price_cents"]) for i in menu["items"]}["margherita"] == 900
            status, _, err = await asyncio.to_thread(call, "GET", f"{base}/menus/nope")
            assert (status, err["reason"], err["grpc_status"]) == (
                404,
                "grpc_not_found",
                "NOT_FOUND",
            )
            await sup.command(["down", "menu"])
            status, _, err = await asyncio.to_thread(call, "GET", f"{base}/menus/luigis")
            assert status in (502, 503), err  # JSON from the gateway, never a stack trace
            assert err["status"] == status

    asyncio.run(main())
