"""The same reference system, unchanged, on this machine's real servers: NATS JetStream or
RabbitMQ for the broker, PostgreSQL for every service's database, the outboxes and the saga
store, Redis or etcd for discovery. Everything is chosen by environment variables, as an
operator would."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from examples.food_delivery import gateway, runtime, scenarios

from interlink.supervisor import Supervisor, load_system

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


async def _drop_tables(namespace: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{namespace}%"
        )
        for row in names:
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        await conn.close()


def test_payment_declines_on_nats_postgres_and_redis() -> None:
    """payment-declines on NATS + PostgreSQL + Redis: the declined share cancelled and
    notified, the rest dispatched, none in limbo, no double charge."""
    namespace = f"food{uuid.uuid4().hex[:8]}"
    env = {
        "FOOD_NAMESPACE": namespace,
        "INTERLINK_BROKER": "nats://127.0.0.1:4222",
        "INTERLINK_REGISTRY": f"redis://127.0.0.1:6379/0?prefix={namespace}:discovery:",
        "INTERLINK_SAGA_STORE": POSTGRES,
        "FOOD_ORDER_DB": POSTGRES,
        "FOOD_PAYMENT_DB": POSTGRES,
        "FOOD_NOTIFICATION_DB": POSTGRES,
    }
    try:
        outcome = asyncio.run(scenarios.run("payment-declines", fast=True, env=env))
    finally:
        asyncio.run(_drop_tables(namespace))
    final = outcome.final
    declined = {oid for oid in outcome.accepted if runtime.share(oid, 0.3)}
    assert len(outcome.accepted) > 30
    assert final["payment"]["declined"] == len(declined)
    assert final["compensated"] == len(declined)
    assert final["notification"]["cancelled"]["orders"] == len(declined)
    assert final["confirmed_final"] == final["confirmed"] == len(outcome.accepted)
    assert final["active"] == 0
    assert final["parked"] == 0, final["parked_why"]
    assert final["payment"]["double_charges"] == 0
    assert final["dlq"] == 0


ROOT = Path(__file__).resolve().parents[2]
SYSTEM = ROOT / "examples/food_delivery/system.yaml"
CART = {
    "restaurant_id": "luigis",
    "items": [{"item_id": "margherita", "quantity": 1}, {"item_id": "lemonade", "quantity": 2}],
}


async def _orders_complete(env: dict[str, str], state: Path, count: int = 5) -> list[dict]:  # type: ignore[type-arg]
    """Start the system with ``env``, place ``count`` orders through the gateway, and return
    each order as the order service shows it once every saga has ended (or after 60 s)."""
    system = load_system(SYSTEM, state_dir=state)
    async with (
        Supervisor(system, env=env, output=lambda _: None) as sup,
        aiohttp.ClientSession() as session,
    ):
        await sup.wait_healthy(90)
        token = gateway.demo_token(sup.service_env("gateway"), "c-real")
        ids: list[str] = []
        refused = []
        while len(ids) < count and len(refused) < 2 * count:
            async with session.post(
                sup.entry_url,
                json={"customer_id": "c-real", **CART},
                headers={"authorization": f"Bearer {token}"},
            ) as answer:
                body = await answer.json()
            if answer.status == 202:
                ids.append(body["order_id"])
            else:  # the 100 ms budget on a cold or busy machine: a JSON 503/504, not a crash
                assert answer.status in (503, 504), body
                refused.append(body)
        assert len(ids) == count, refused
        shown: list[dict] = []  # type: ignore[type-arg]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = []
            for oid in ids:
                async with session.get(f"{sup.url('order')}/orders/{oid}") as answer:
                    shown.append(await answer.json())
            if all(o["saga"] and o["saga"]["status"] == "COMPLETED" for o in shown):
                break
            await asyncio.sleep(0.3)
        return shown


@pytest.fixture
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of the test's own on this machine's RabbitMQ (guest may use it), deleted after."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is missing: it comes with rabbitmq-server (make services)")
    vhost = f"food-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)

    run("add_vhost", vhost)
    try:
        run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        run("delete_vhost", vhost)


def test_an_order_completes_its_saga_on_rabbitmq(rabbitmq_vhost: str, tmp_path: Path) -> None:
    """RabbitMQ as the broker (a private vhost): orders placed through the gateway are
    authorized, dispatched and notified; every saga completes."""
    env = {"INTERLINK_BROKER": f"amqp://guest:guest@127.0.0.1:5672/{rabbitmq_vhost}"}
    shown = asyncio.run(_orders_complete(env, tmp_path))
    assert [o["status"] for o in shown] == ["DISPATCHED"] * 5, shown
    assert all(o["saga"]["steps"]["notify"] == "SUCCEEDED" for o in shown)


@pytest.fixture
def private_etcd() -> Iterator[str]:
    """A private etcd on a free loopback port (scripts/ensure-etcd.sh installs Debian's
    etcd-server when it is missing); its URL."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/ensure-etcd.sh"), "--start"],
        capture_output=True,
        text=True,
        timeout=330,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"could not start etcd: {done.stderr}")
    pid, url, data = done.stdout.split()
    try:
        yield url.replace("http://", "etcd://")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


def test_an_order_completes_its_saga_with_etcd_discovery(private_etcd: str, tmp_path: Path) -> None:
    """etcd as the registry (a private one): the gateway finds order, order finds menu and
    pricing through it; every saga completes."""
    env = {"INTERLINK_REGISTRY": private_etcd}
    shown = asyncio.run(_orders_complete(env, tmp_path))
    assert [o["status"] for o in shown] == ["DISPATCHED"] * 5, shown
    assert all(o["saga"]["status"] == "COMPLETED" for o in shown)
