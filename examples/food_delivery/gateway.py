"""gateway: the system's only public entry, ``interlink.gateway`` configured by
``gateway.yaml`` next to this file. Customers present a JWT; ``/orders`` goes to the order
service (found through discovery), ``/menus/{restaurant_id}`` is answered by menu's gRPC
``GetMenu`` as JSON. The other services listen on loopback only.

``demo_token`` mints a customer's token with the system's key (``FOOD_JWT_SECRET``), which is
how the scenarios, ``interlink up``'s curl and the tests place orders.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from pathlib import Path

from examples.food_delivery import runtime

CONFIG = Path(__file__).with_name("gateway.yaml")
#: Who signs and who accepts the customers' tokens (``auth`` in gateway.yaml).
ISSUER = AUDIENCE = "food-delivery"


def demo_token(
    env: Mapping[str, str] | None = None, customer: str = "c1", *, ttl: float = 3600.0
) -> str:
    """A customer's bearer token, signed with ``FOOD_JWT_SECRET`` from ``env`` (default: this
    process's environment): ``sub`` the customer, scope ``orders``, valid for ``ttl`` seconds.
    An identity provider issues these in production; the demo signs its own."""
    import jwt

    env = os.environ if env is None else env
    now = int(time.time())
    claims = {
        "sub": customer,
        "scope": "orders",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + int(ttl),
    }
    return jwt.encode(claims, env["FOOD_JWT_SECRET"], algorithm="HS256")


async def main(stop: asyncio.Event | None = None) -> None:
    """Serve the gateway: until SIGTERM (reloading on SIGHUP), or until ``stop`` is set (then
    the signals are the caller's: several services in one process)."""
    from interlink.gateway import Gateway

    runtime.configure_logging("gateway")
    gateway = Gateway(CONFIG)
    if stop is None:
        await gateway.run()
        return
    await gateway.start()
    try:
        await stop.wait()
    finally:
        await gateway.stop(grace=2.0)


if __name__ == "__main__":
    runtime.run(main, fast_loop=True)
