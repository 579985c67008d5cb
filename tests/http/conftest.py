"""Fixtures for the HTTP tests: a fault-injecting server, a socket that resets every
connection, and a port nobody listens on."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from http_support import FaultApp, serve

from interlink.http import InterlinkMiddleware


@pytest.fixture(scope="module")
def faults() -> Iterator[tuple[FaultApp, str]]:
    """One fault-injecting server per test module: (app, base URL)."""
    app = FaultApp()
    # deadlines are read but not enforced here, so that a hang really hangs and the client
    # side of timeouts is what the tests see
    with serve(InterlinkMiddleware(app, enforce_deadline=False)) as base:
        yield app, base


@pytest.fixture(scope="module")
def reset_url() -> Iterator[str]:
    """A server that reads the request and resets the connection (RST) without answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError):
                conn.settimeout(1)
                conn.recv(65536)
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@pytest.fixture
def refused_url() -> str:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
