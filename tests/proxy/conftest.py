"""Fixtures: one loop thread and one real upstream per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
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
