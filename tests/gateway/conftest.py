"""Fixtures for the gateway tests: the engine tests' loop thread and real upstream."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# the loop thread, the upstream and the raw-socket helpers are the engine tests' own
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))

from proxy_support import LoopThread, start_upstream


@pytest.fixture(scope="module")
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def upstream(loop_thread: LoopThread) -> Iterator[str]:
    """The base URL of a real aiohttp upstream on loopback."""
    runner, port = loop_thread.run(start_upstream())
    yield f"http://127.0.0.1:{port}"
    loop_thread.run(runner.cleanup())
