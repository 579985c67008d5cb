"""The order service's API on the running system: a placed order's correlation id reaches the
customer's notification through the outbox, the broker and the saga; bad carts get a 4xx JSON
body with the correlation id; unknown orders a 404."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

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
    """202 + location; GET shows the saga; the notification carries the request's id."""

    async def main() -> None:
        system = load_system(SYSTEM, state_dir=tmp_path)
        async with Supervisor(system, output=lambda _: None) as sup:
            await sup.wait_healthy(90)
            entry, base = sup.entry_url, sup.url("order")
            assert entry is not None
            cart = {
                "customer_id": "c-7",
                "restaurant_id": "luigis",
                "items": [{"item_id": "margherita", "quantity": 2}],
            }
            status, headers, body = await asyncio.to_thread(
                call, "POST", entry, cart, {"x-request-id": "trace-me-123"}
            )
            assert status == 202, body
            assert headers["location"] == f"/orders/{body['order_id']}"
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
            status, _, shown = await asyncio.to_thread(call, "GET", f"{base}/orders/{order_id}")
            assert status == 200
            assert shown["status"] == "DISPATCHED"
            assert shown["saga"]["status"] == "COMPLETED"

            status, headers, err = await asyncio.to_thread(
                call, "POST", entry, {"customer_id": "c", "restaurant_id": "luigis", "items": []}
            )
            assert status == 422
            assert err["error"] == "invalid_order"
            assert "items" in err["detail"]
            assert err["correlation_id"] == headers["x-request-id"]
            bad = {**cart, "items": [{"item_id": "sushi", "quantity": 1}]}
            status, _, err = await asyncio.to_thread(call, "POST", entry, bad)
            assert (status, err["error"]) == (422, "invalid_order")
            assert "sushi" in err["detail"]
            status, _, err = await asyncio.to_thread(call, "GET", f"{base}/orders/nope")
            assert (status, err["error"]) == (404, "not_found")

    asyncio.run(main())
