"""Faults on RabbitMQ: the broker restarts, a consumer process dies, a consumer is slow.

The restart tests own a private RabbitMQ node (its own node name, ports and Mnesia directory;
it starts in about 5 s here). A single-node quorum queue does not always elect its leader
again after a kill -9 (rabbitmq/rabbitmq-server#10070), so the crash is tested with classic
queues and the quorum queues with a clean restart. The other tests use the shared broker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.messaging._fault_support import (
    PrivateServer,
    kill_consumer_mid_batch,
    rabbit_server,
    restart_while_flowing,
    slow_consumer_publishing,
)

pytestmark = pytest.mark.slow  # processes killed with SIGKILL and restarted

SHARED = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateServer]:
    """A private RabbitMQ node for this module (skipped where none can be started)."""
    private = rabbit_server()
    if private is None:
        pytest.skip("no rabbitmq-server on this machine")
    try:
        private.start()
    except RuntimeError as exc:
        private.close()
        pytest.skip(f"a private RabbitMQ node did not start within 20 s: {exc}")
    yield private
    private.close()


@pytest.mark.parametrize(
    ("queue_type", "stop"),
    [("classic", signal.SIGKILL), ("quorum", signal.SIGTERM)],
    ids=["classic-kill-9", "quorum-clean-restart"],
)
def test_restart_loses_no_confirmed_message(
    node: PrivateServer, queue_type: str, stop: signal.Signals
) -> None:
    """The broker restarts while publishing and consuming: publishes fail and are retried,
    the robust connection restores channels and consumers, no confirmed message is lost."""
    url = (
        f"amqp://guest:guest@127.0.0.1:{node.port}/?queue_type={queue_type}"
        f"&exchange=restart-{queue_type}&reconnect_interval=0.2&timeout=2"
    )
    confirmed, received, failures = asyncio.run(
        restart_while_flowing(url, lambda: node.restart(sig=stop))
    )
    assert len(confirmed) == 150
    assert set(confirmed) <= received
    assert failures > 0


def test_killed_consumer_process_loses_nothing_and_effects_run_once(tmp_path: Path) -> None:
    """kill -9 of a consumer process mid-batch: the broker requeues its unacked deliveries
    for the next process; with the PostgreSQL idempotency store each effect commits once."""
    result = kill_consumer_mid_batch(SHARED, tmp_path)
    assert result.handled_before_kill < len(result.published)
    assert set(result.handled) == set(result.published)
    assert sorted(result.effects) == sorted(result.published)


def test_slow_consumer_does_not_slow_or_fail_the_publisher() -> None:
    """Publishing 400 messages past a consumer that takes 20 ms each neither fails nor
    waits for the consumer."""
    took, handled = asyncio.run(slow_consumer_publishing(SHARED))
    assert handled < 400
    assert took < 10.0
