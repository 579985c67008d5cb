"""Faults on NATS JetStream: the server restarts, a consumer process dies, a consumer is slow.

The restart test owns a private nats-server (free port, file storage in a temporary
directory); the others use the shared server with a short ``ack_wait``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.messaging._fault_support import (
    PrivateServer,
    kill_consumer_mid_batch,
    nats_server,
    restart_while_flowing,
    slow_consumer_publishing,
)

pytestmark = pytest.mark.slow  # processes killed with SIGKILL and restarted

SHARED = "nats://127.0.0.1:4222"


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    """A private JetStream server this test may kill."""
    private = nats_server()
    private.start()
    yield private
    private.close()


def test_restart_loses_no_confirmed_message(server: PrivateServer) -> None:
    """kill -9 of the server, down for a second, while publishing and consuming: the clients
    reconnect by themselves, unconfirmed publishes are retried (same id), and every
    confirmed message is consumed."""
    url = f"nats://127.0.0.1:{server.port}?timeout=0.5&reconnect_wait=0.1&pull_expires=1"
    confirmed, received, failures = asyncio.run(
        restart_while_flowing(url, lambda: server.restart(down=1.0))
    )
    assert len(confirmed) == 150
    assert set(confirmed) <= received
    assert failures > 0  # the outage was real: some publishes were not confirmed in time


def test_killed_consumer_process_loses_nothing_and_effects_run_once(tmp_path: Path) -> None:
    """kill -9 of a consumer process mid-batch: every message is handled at least once by
    the next process; with the PostgreSQL idempotency store each effect commits once."""
    result = kill_consumer_mid_batch(f"{SHARED}?ack_wait=1", tmp_path)
    assert result.handled_before_kill < len(result.published)
    assert set(result.handled) == set(result.published)
    assert sorted(result.effects) == sorted(result.published)


def test_slow_consumer_does_not_slow_or_fail_the_publisher() -> None:
    """Publishing 400 messages past a consumer that takes 20 ms each neither fails nor
    waits for the consumer."""
    took, handled = asyncio.run(slow_consumer_publishing(SHARED))
    assert handled < 400
    assert took < 5.0
