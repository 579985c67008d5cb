"""``interlink up`` traces every service and serves the dashboard on the system's own stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
ORDER = {
    "customer_id": "c1",
    "restaurant_id": "luigis",
    "items": [{"item_id": "margherita", "quantity": 1}],
}


def test_up_serves_a_dashboard_that_sees_the_system(tmp_path: Path) -> None:
    """Orders placed through the gateway show as traces that start there, the gateway -> order,
    order -> menu and order -> pricing calls as sync edges (order's coloured by its breakers),
    the saga as completed."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "interlink.cli.main", "up",
            str(ROOT / "examples/food_delivery/system.yaml"),
            "--state-dir", str(tmp_path / "state"), "--dashboard-port", "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert proc.stdout is not None
    entry = board = token = None
    try:
        deadline = time.monotonic() + 120
        while board is None:
            line = proc.stdout.readline()
            assert line, "interlink up ended before printing the dashboard's URL"
            assert time.monotonic() < deadline
            if line.startswith("entry: "):
                entry = line.split()[1]
            if line.startswith("try: "):  # the printed curl carries a customer's token
                token = line.split("authorization: Bearer ")[1].split("'")[0]
            if line.startswith("dashboard: "):
                board = line.split()[1].split("/?token=")[0]
        assert entry is not None
        assert token is not None
        for _ in range(3):
            answer = httpx.post(entry, content=json.dumps(ORDER), timeout=10,
                                headers={"content-type": "application/json",
                                         "authorization": f"Bearer {token}"})  # fmt: skip
            assert answer.status_code in (200, 201, 202), answer.text

        def overview() -> dict[str, object]:
            return dict(httpx.get(f"{board}/api/overview", timeout=10).json())

        seen: dict[str, object] = {}
        while time.monotonic() < deadline:
            seen = overview()
            edges = {(e["source"], e["target"]): e for e in seen["edges"]}  # type: ignore[attr-defined]
            sagas = seen["sagas"] or {}
            if (
                edges.get(("order", "menu"), {}).get("breaker") == "closed"
                and ("order", "payment") in edges
                and sagas.get("COMPLETED", 0) >= 3  # type: ignore[union-attr]
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the dashboard never saw the system: {seen}")
        edges = {(e["source"], e["target"]): e for e in seen["edges"]}  # type: ignore[attr-defined]
        assert edges[("order", "menu")]["kind"] == "sync"
        assert edges[("order", "pricing")]["breaker"] == "closed"
        assert edges[("order", "payment")]["kind"] == "async"
        assert edges[("gateway", "order")]["kind"] == "sync"  # the customers' only way in
        traces = httpx.get(f"{board}/api/traces?service=order", timeout=10).json()["traces"]
        roots = {t["root_name"] for t in traces}
        assert "POST orders" in roots, roots  # started at the gateway, on its route 'orders'

        assert not any("/metrics" in t["root_name"] for t in traces)  # scrapes are not traced
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        finally:
            proc.stdout.close()
