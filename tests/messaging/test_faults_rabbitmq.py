"""Faults on RabbitMQ: the broker restarts, a consumer process dies, a consumer is slow.

The restart tests own a private RabbitMQ node (its own node name, ports and Mnesia directory;
it starts in about 5 s here). A single-node quorum queue does not always elect its leader
again after a kill -9 (rabbitmq/rabbitmq-server#10070), so the crash is tested with classic
queues and the quorum queues with a clean restart. The other tests use the shared broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.messaging._fault_support import (
    PrivateServer,
    drop_topic,
    kill_consumer_mid_batch,
    rabbit_server,
    restart_while_flowing,
    slow_consumer_publishing,
)
from tests.messaging.test_sqlite_faults import CONSUMER, N, _effects_in_log, _publish, _wait

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


def test_kill_9_with_a_lease_store_finishes_within_the_claim_lease(tmp_path: Path) -> None:
    """With an idempotency store whose claims are leases (SQLite), the claims a killed
    consumer held last the broker's ``claim_lease``, not the store's 60 s: RabbitMQ hands its
    messages to the consumer still running at once, and every effect is done within the
    lease + 1 s of the kill (plus a margin for a loaded machine)."""
    lease = 2.0
    topic = f"lease-{uuid.uuid4().hex[:10]}"
    url = f"{SHARED}?claim_lease={lease:g}"
    store, log = f"sqlite:///{tmp_path}/inbox.db", tmp_path / "deliveries.log"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    ids = asyncio.run(_publish(url, topic))
    log.touch()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HANDLER_SECONDS": "0.05"}

    def spawn() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), url, topic, store, "-", str(log)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )

    first = spawn()
    second = None
    try:
        _wait(lambda: len(_effects_in_log(log)) >= 10, 30, "the first consumer to make progress")
        second = spawn()
        assert second.stdout is not None
        assert second.stdout.readline().strip() == "ready"
        _wait(lambda: len(set(_effects_in_log(log))) >= N - 60, 60, "most effects")
        first.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        first.wait(timeout=10)
        _wait(lambda: set(_effects_in_log(log)) == set(ids), 90, "every effect")
        took = time.monotonic() - killed
    finally:
        for proc in (first, second):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)  # and close its pipe
        asyncio.run(drop_topic(url, topic, ("g",)))
    print(f"effects done {took:.2f} s after the kill (claim_lease {lease:g} s)")
    assert took < lease + 1.0 + 3.0  # was the store's 60 s lease
