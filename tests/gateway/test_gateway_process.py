"""The gateway as a process: admin port, SIGHUP reload under load, refused reloads, --watch,
--workers."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from gateway_process import GatewayProcess, free_port, free_ports


def _config(port: int, admin: int, upstream: str, routes: str) -> str:
    return f"""
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
routes:
{routes}
"""


def _route(name: str, path: str, upstream: str) -> str:
    return f"""  - name: {name}
    match: {{path: {path}}}
    upstream: {upstream}
    rewrite: /
"""


def _poll(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


def test_admin_endpoints(tmp_path: Path, upstream: str, ports: tuple[int, int]) -> None:
    """/healthz, /readyz and /metrics with per-route counters."""
    port, admin = ports
    config = tmp_path / "gw.yaml"
    config.write_text(_config(port, admin, upstream, _route("menu", "/menu", upstream)))
    gateway = GatewayProcess(config)
    try:
        gateway.wait_ready(admin)
        assert httpx.get(f"http://127.0.0.1:{port}/menu/1", timeout=10).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/nope", timeout=10).status_code == 404
        assert httpx.get(f"http://127.0.0.1:{admin}/healthz", timeout=10).json() == {"status": "ok"}
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
        assert 'interlink_proxy_requests_total{route="menu",status="200"} 1' in metrics
        assert 'interlink_proxy_requests_total{route="-",status="404"} 1' in metrics
        assert 'interlink_proxy_request_seconds_count{route="menu"} 1' in metrics
    finally:
        gateway.stop()


@pytest.mark.slow
def test_reload_under_load(tmp_path: Path, upstream: str, ports: tuple[int, int]) -> None:
    """SIGHUP swaps 5,000 routes in while requests flow: none fails; a broken file is refused
    and the old table keeps serving."""
    port, admin = ports
    config = tmp_path / "gw.yaml"
    base_routes = _route("menu", "/menu", upstream)
    config.write_text(_config(port, admin, upstream, base_routes))
    gateway = GatewayProcess(config)
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def load() -> None:
        async def go() -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                while not done.is_set():
                    replies = await asyncio.gather(
                        *(client.get(f"http://127.0.0.1:{port}/menu/x") for _ in range(8)),
                        return_exceptions=True,
                    )
                    for reply in replies:
                        count[0] += 1
                        if isinstance(reply, BaseException) or reply.status_code != 200:
                            failures.append(repr(reply))

        asyncio.run(go())

    try:
        gateway.wait_ready(admin)
        worker = threading.Thread(target=load)
        worker.start()
        many = "".join(_route(f"r{i}", f"/r{i}", upstream) for i in range(5000))
        config.write_text(_config(port, admin, upstream, base_routes + many))
        gateway.signal(signal.SIGHUP)
        _poll(lambda: httpx.get(f"http://127.0.0.1:{port}/r4999", timeout=10).status_code == 200)
        config.write_text("routes: [this is not a route]\n")
        gateway.signal(signal.SIGHUP)
        time.sleep(1.0)
        assert httpx.get(f"http://127.0.0.1:{port}/r4999", timeout=10).status_code == 200
        done.set()
        worker.join(30)
        assert count[0] > 50
        assert failures == []
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
        assert "interlink_proxy_reloads_total 1" in metrics
    finally:
        done.set()
        stderr = gateway.stop()
    assert "reload refused" in stderr


def test_watch_reloads_a_changed_file(
    tmp_path: Path, upstream: str, ports: tuple[int, int]
) -> None:
    """With --watch, saving the file is enough."""
    port, admin = ports
    config = tmp_path / "gw.yaml"
    config.write_text(_config(port, admin, upstream, _route("a", "/a", upstream)))
    gateway = GatewayProcess(config, "--watch")
    try:
        gateway.wait_ready(admin)
        assert httpx.get(f"http://127.0.0.1:{port}/b", timeout=10).status_code == 404
        time.sleep(0.05)  # a distinct modification time
        config.write_text(_config(port, admin, upstream, _route("b", "/b", upstream)))
        _poll(lambda: httpx.get(f"http://127.0.0.1:{port}/b", timeout=10).status_code == 200)
    finally:
        gateway.stop()


@pytest.mark.slow
def test_workers_share_the_port(tmp_path: Path, upstream: str, ports: tuple[int, int]) -> None:
    """--workers 2: both workers answer on one port, each with its own admin port."""
    port, admin = ports[0], free_ports(2)
    config = tmp_path / "gw.yaml"
    config.write_text(_config(port, admin, upstream, _route("a", "/a", upstream)))
    gateway = GatewayProcess(config, "--workers", "2")
    try:
        gateway.wait_ready(admin)
        gateway.wait_ready(admin + 1)
        for _ in range(20):
            with httpx.Client(timeout=10) as client:  # new connections spread over workers
                assert client.get(f"http://127.0.0.1:{port}/a").status_code == 200
        served = 0
        for worker_admin in (admin, admin + 1):
            text = httpx.get(f"http://127.0.0.1:{worker_admin}/metrics", timeout=10).text
            for line in text.splitlines():
                if line.startswith('interlink_proxy_requests_total{route="a"'):
                    served += int(line.rsplit(" ", 1)[1])
        assert served == 20
    finally:
        gateway.stop()
