"""The configuration in docs/gateway.md is valid and builds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from interlink.gateway import build_table, parse_config
from interlink.proxy import REASONS, MemoryBuckets

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"


class _NoResolver:
    async def apick(self, service: str) -> None:
        raise AssertionError("not called while building")


def test_example_configuration_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The complete example validates and builds a table with its four routes."""
    monkeypatch.setenv("GATEWAY_JWT_SECRET", "a-secret-of-at-least-thirty-two-bytes!")
    text = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert text is not None
    config = parse_config(text.group(1), "docs/gateway.md")
    table = build_table(config, resolver=_NoResolver(), buckets=MemoryBuckets())
    assert [r.name for r in table.router.routes] == [
        "orders-read",
        "menus",
        "beta-search",
        "static",
    ]


def test_every_reason_is_documented() -> None:
    """Each reason the proxy can answer with has a row in the errors table."""
    text = DOC.read_text()
    for reason in REASONS:
        assert f"`{reason}`" in text, reason
