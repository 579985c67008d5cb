"""Settings every test shares: the event loop async tests run on (see support.py)."""

from __future__ import annotations

import pytest
from support import LOOP_VARIABLE, requested_loop, use_loop


def pytest_configure(config: pytest.Config) -> None:
    """Install the requested loop before any test builds one."""
    if requested_loop() != "asyncio":
        use_loop(requested_loop())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put the standard loop back (pytest may run in-process)."""
    if requested_loop() != "asyncio":
        use_loop("asyncio")


def pytest_report_header(config: pytest.Config) -> str:
    """Say in the run's header which loop the async tests run on."""
    return f"event loop: {requested_loop()} ({LOOP_VARIABLE})"
