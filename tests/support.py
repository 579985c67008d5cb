"""What every test directory shares: the event loop async tests run on, and waiting for a
condition by polling (never by a fixed sleep, so a busy machine only makes tests slower).

``INTERLINK_TEST_LOOP=uvloop`` runs every async test on uvloop instead of the standard loop
(tests/conftest.py installs it), so the suites prove that nothing depends on asyncio's own loop
class; ``make test`` runs the resilience, HTTP and gRPC suites that way.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

LOOP_VARIABLE = "INTERLINK_TEST_LOOP"
LOOPS = ("asyncio", "uvloop")


def requested_loop() -> str:
    """The loop ``INTERLINK_TEST_LOOP`` names; a clear error for a name we do not know."""
    loop = os.environ.get(LOOP_VARIABLE, "") or "asyncio"
    if loop not in LOOPS:
        raise pytest.UsageError(f"{LOOP_VARIABLE} must be one of {', '.join(LOOPS)}: {loop!r}")
    return loop


def use_loop(loop: str) -> None:
    """Make every ``asyncio.run()`` and anyio runner build ``loop``'s event loop."""
    policy = None
    if loop == "uvloop":
        import uvloop

        policy = uvloop.EventLoopPolicy()
    # Loop policies are deprecated from 3.14 on; they are still the one switch that reaches
    # every asyncio.run() the tests start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


async def until(
    condition: Callable[[], object | Awaitable[object]], within: float = 5.0, what: str = ""
) -> float:
    """Poll ``condition`` (a plain or async callable) every few ms until it is truthy; fail
    after ``within`` seconds naming ``what``. Returns how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > within:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        await asyncio.sleep(0.005)


def wait_until(
    condition: Callable[[], object], within: float = 5.0, what: str = "", interval: float = 0.005
) -> Any:
    """``until`` for blocking code: poll ``condition`` every ``interval`` seconds until it is
    truthy and return that value; fail after ``within`` seconds naming ``what``."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or condition}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_head(conn: socket.socket) -> bool:
    """Read one request's head on a raw server socket (the tests using it send no bodies);
    False when the peer closed first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    return True


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
