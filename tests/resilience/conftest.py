"""Run this directory's asyncio code on the event loop named by ``INTERLINK_TEST_LOOP``.

``INTERLINK_TEST_LOOP=uvloop`` makes every ``asyncio.run`` here use uvloop's loop (no
``_thread_id``, its own clock), so the whole resilience suite runs under it; unset, or
``asyncio``, keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

LOOP = os.environ.get("INTERLINK_TEST_LOOP", "asyncio")


@pytest.fixture(autouse=True)
def _event_loop_under_test() -> Iterator[None]:
    if LOOP == "asyncio":
        yield
        return
    if LOOP != "uvloop":
        raise ValueError(f"'INTERLINK_TEST_LOOP' must be 'asyncio' or 'uvloop': {LOOP!r}")
    import uvloop

    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)
