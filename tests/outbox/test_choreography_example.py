"""The documented choreography example runs and ends where its README says."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "examples" / "choreography" / "app.py"


def test_choreography_example_settles(tmp_path: Path) -> None:
    """Orders 1-2 paid and confirmed; order 3 declined, cancelled, customer notified."""
    spec = importlib.util.spec_from_file_location("choreography_app", APP)
    assert spec is not None
    assert spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    result = asyncio.run(asyncio.wait_for(app.main(tmp_path), 30))
    assert result["orders"] == [
        ("order-1", "CONFIRMED"),
        ("order-2", "CONFIRMED"),
        ("order-3", "CANCELLED"),
    ]
    assert result["payments"] == [
        ("order-1", "AUTHORIZED"),
        ("order-2", "AUTHORIZED"),
        ("order-3", "DECLINED"),
    ]
    assert result["notifications"] == ["to customer: order order-3 was cancelled, payment declined"]
