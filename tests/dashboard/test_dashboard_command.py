"""``python -m interlink.dashboard`` takes its sources from the environment a system shares."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from interlink.tracing import SpanRecord, TraceStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sources_from_the_environment(tmp_path: Path) -> None:
    """INTERLINK_TRACES and friends are read; the page and the API answer; reads need no token,
    a replay without it is refused."""
    store = TraceStore.from_url(f"sqlite:///{tmp_path}/traces.db")
    now = int(time.time() * 1e9)
    store.add(
        [
            SpanRecord(
                trace_id="ab" * 16,
                span_id="01" * 8,
                parent_id=None,
                name="GET /orders",
                service="order",
                kind="server",
                start_ns=now,
                end_ns=now + 1_000_000,
            )
        ]
    )
    port = _free_port()
    env = {
        **os.environ,
        "INTERLINK_TRACES": f"sqlite:///{tmp_path}/traces.db",
        "INTERLINK_SAGA_STORE": f"sqlite:///{tmp_path}/sagas.db",
        "INTERLINK_BROKER": f"sqlite:///{tmp_path}/events.db",
        "INTERLINK_DASHBOARD_PORT": str(port),
        "INTERLINK_DASHBOARD_TOKEN": "secret",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "interlink.dashboard"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip() == f"dashboard: http://localhost:{port}/?token=secret"
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                overview = httpx.get(f"{base}/api/overview", timeout=5).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.1)
        assert [s["name"] for s in overview["services"]] == ["order"]
        assert overview["sagas"]["NEEDS_ATTENTION"] == 0
        assert "interlink" in httpx.get(base).text
        refused = httpx.post(f"{base}/api/dlq/orders/replay")
        assert refused.status_code == 401
    finally:
        proc.terminate()
        proc.wait(20)
        if proc.stdout is not None:
            proc.stdout.close()
