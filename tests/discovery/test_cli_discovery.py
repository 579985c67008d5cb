"""`interlink discovery list` and `watch` on a real (SQLite) registry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support import free_port
from typer.testing import CliRunner

from interlink.cli.main import app
from interlink.discovery import Registry, ServiceInstance


def register(url: str, *instances: ServiceInstance) -> None:
    async def run() -> None:
        reg = Registry.from_url(url)
        for instance in instances:
            lease = await reg.register(instance, ttl=60)
            await lease.stop()  # keep the row: its TTL outlives the test
        await reg.aclose()

    asyncio.run(run())


def test_list_shows_a_service_in_a_table(tmp_path: Path) -> None:
    """`list SERVICE` prints each instance's id, address and zone."""
    url = f"sqlite:///{tmp_path}/reg.db"
    register(url, ServiceInstance("orders", "o-1", "127.0.0.1", 8001, zone="eu-1"))
    result = CliRunner().invoke(app, ["discovery", "list", "orders", "--registry", url])
    assert result.exit_code == 0, result.output
    assert "orders: 1 instance(s)" in result.output
    assert "127.0.0.1:8001" in result.output
    assert "eu-1" in result.output


def test_list_without_a_service_shows_all(tmp_path: Path) -> None:
    """`list` alone walks every service the registry knows."""
    url = f"sqlite:///{tmp_path}/reg.db"
    register(
        url,
        ServiceInstance("orders", "o-1", "127.0.0.1", 8001),
        ServiceInstance("payments", "p-1", "127.0.0.1", 8002),
    )
    result = CliRunner().invoke(app, ["discovery", "list", "-r", url])
    assert result.exit_code == 0, result.output
    assert "all services: 2 instance(s)" in result.output
    assert "payments" in result.output


def test_watch_prints_snapshots(tmp_path: Path) -> None:
    """`watch -n 1` prints the current snapshot and stops."""
    result = CliRunner().invoke(
        app, ["discovery", "watch", "orders", "-n", "1", "-r", "static:?orders=127.0.0.1:9"]
    )
    assert result.exit_code == 0, result.output
    assert "127.0.0.1:9" in result.output


def test_bad_registry_url_is_a_clean_error() -> None:
    """An unknown scheme exits 1 with the message, no traceback."""
    result = CliRunner().invoke(app, ["discovery", "list", "x", "-r", "consul://h"])
    assert result.exit_code == 1
    assert "unknown registry scheme 'consul'" in result.output


def test_unreachable_registry_is_a_clean_error() -> None:
    """A registry nobody answers for exits 1 naming it and the client's error, no traceback."""
    port = free_port()
    result = CliRunner().invoke(app, ["discovery", "list", "x", "-r", f"redis://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert f"registry redis://127.0.0.1:{port} failed: ConnectionError" in result.output
    assert "Traceback" not in result.output
