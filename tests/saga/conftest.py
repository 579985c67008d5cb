"""Fixtures of the saga tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from saga_helpers import PG_URL


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A saga store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagas.db'}"
    return PG_URL
