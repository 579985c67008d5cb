"""Private broker processes and the fault scenarios shared by ``test_faults_*.py``.

A test that kills a broker owns it: a NATS, Redis or RabbitMQ server started here on a free
loopback port with its data in a temporary directory, never the shared server on the standard
port. Run as a script (``python -m tests.messaging._fault_support consume ...``) this module is
the consumer process the kill -9 scenario kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from support import free_port, until, wait_port

ROOT = Path(__file__).resolve().parents[2]
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class PrivateServer:
    """A broker process this test owns, in its own process group: ``crash()`` kills the group
    with SIGKILL, ``start()`` brings it back on the same port with the same data."""

    name: str
    argv: list[str]
    port: int
    data: Path
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 20.0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start and wait for the port; returns how long that took."""
        began = time.monotonic()
        log = open(self.data / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.data,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, self.start_timeout)
        return time.monotonic() - began

    def crash(self, sig: int = signal.SIGKILL) -> None:
        """kill -9 the server (its whole process group; ``sig=SIGTERM`` for a clean stop)
        and wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the port is free once every child is gone
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
            except OSError:
                return
            time.sleep(0.02)

    def restart(self, down: float = 0.0, sig: int = signal.SIGKILL) -> None:
        """Crash (or stop with ``sig``), stay down ``down`` seconds, then start again."""
        self.crash(sig)
        time.sleep(down)
        self.start()

    def close(self) -> None:
        """Crash and remove the data."""
        self.crash()
        shutil.rmtree(self.data, ignore_errors=True)


def _tmp(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"interlink-{prefix}-"))
    path.chmod(0o777)
    return path


def nats_server() -> PrivateServer:
    """JetStream with file storage in a temporary directory."""
    port, data = free_port(), _tmp("nats")
    argv = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data / "js")]
    return PrivateServer("nats", argv, port, data, start_timeout=10)


def redis_server() -> PrivateServer:
    """Redis with an fsync-always append-only file: a confirmed XADD survives kill -9."""
    port, data = free_port(), _tmp("redis")
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
    ]  # fmt: skip
    return PrivateServer("redis", argv, port, data, start_timeout=10)


def rabbit_server() -> PrivateServer | None:
    """A private RabbitMQ node (own name, ports and Mnesia directory), or None when the
    machine has no ``rabbitmq-server``."""
    binary = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not binary.exists():
        return None
    port, dist, data = free_port(), free_port(), _tmp("rabbit")
    (data / "rabbitmq.conf").write_text(
        f"listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"
    )
    (data / "enabled_plugins").write_text("[].\n")
    env = {
        "HOME": str(data),  # the node's Erlang cookie goes here
        "RABBITMQ_NODENAME": f"interlink-test-{uuid.uuid4().hex[:8]}@localhost",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(data / "mnesia"),
        "RABBITMQ_LOG_BASE": str(data / "log"),
        "RABBITMQ_CONFIG_FILE": str(data / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(data / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": "/dev/null",
    }
    return PrivateServer("rabbit", [str(binary)], port, data, env, start_timeout=20)


async def drop_topic(url: str, topic: str, groups: tuple[str, ...]) -> None:
    """Delete what a scenario created for ``topic`` on a shared server (streams, keys or
    queues, and the topic's entry in the RabbitMQ registry)."""
    if url.startswith("nats"):
        import nats

        nc = await nats.connect(url.split("?", 1)[0])
        js = nc.jetstream()
        for name in (f"interlink:{topic}", f"interlink:{topic}:dlq"):
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
        await nc.close()
    elif url.startswith("redis"):
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url.split("?", 1)[0])
        keys = [k async for k in client.scan_iter(match=f"interlink:{topic}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    else:
        import aio_pika

        conn = await aio_pika.connect(url.split("?", 1)[0])
        channel = await conn.channel()
        for name in (*(f"{topic}:{g}" for g in groups), f"{topic}:#backlog", f"{topic}.dlq"):
            with contextlib.suppress(Exception):
                await channel.queue_delete(name, if_unused=False, if_empty=False)
        registry = await channel.declare_queue("interlink.topics", durable=True)
        while (message := await registry.get(no_ack=False, fail=False)) is not None:
            if message.body.decode() in (topic, f"{topic}.dlq"):
                await message.ack()
        await channel.close()  # the other registry entries go back
        await conn.close()


# ------------------------------------------------------------------------------ scenarios


async def restart_while_flowing(
    url: str, restart: Callable[[], None], *, total: int = 150, rate: float = 300.0
) -> tuple[list[str], set[str], int]:
    """Publish ``total`` messages one by one at about ``rate``/s while a consumer consumes;
    restart the broker (in a thread) a third of the way. A publish that is not confirmed is
    retried with the same id. Returns (confirmed ids, received ids, failed publish attempts)
    once every confirmed id was received, or raises after 30 s."""
    from interlink.messaging import BackendUnavailable, Broker, PublishError, current_message

    topic = f"fault-{uuid.uuid4().hex[:10]}"
    received: set[str] = set()
    consumer = Broker.from_url(url, grace=1.0)

    @consumer.subscriber(topic, group="g", concurrency=4)
    async def handle(message: bytes) -> None:
        received.add(current_message().envelope.id)

    publisher = Broker.from_url(url)
    confirmed: list[str] = []
    failures = 0

    async def publish_all() -> None:
        nonlocal failures
        for i in range(total):
            mid = f"{topic}-{i}"
            while True:
                try:
                    await publisher.publish(topic, b"payload %d" % i, message_id=mid)
                except (PublishError, BackendUnavailable, ConnectionError, TimeoutError):
                    failures += 1
                    await asyncio.sleep(0.05)
                    continue
                confirmed.append(mid)
                break
            await asyncio.sleep(1 / rate)

    async with consumer:
        flowing = asyncio.create_task(publish_all())
        try:
            await until(lambda: len(confirmed) >= total // 3, 15, "a third published")
            await asyncio.to_thread(restart)
            await asyncio.wait_for(flowing, 30)
            await until(lambda: set(confirmed) <= received, 30, "every confirmed id consumed")
        finally:
            flowing.cancel()
            with contextlib.suppress(BaseException):
                await flowing
            await publisher.stop()
    return confirmed, received, failures


async def slow_consumer_publishing(url: str, *, total: int = 400) -> tuple[float, int]:
    """A consumer handling one message per 20 ms while ``total`` are published (serially and
    in batches): returns (seconds publishing took, messages handled by then)."""
    from interlink.messaging import Broker

    topic = f"slow-{uuid.uuid4().hex[:10]}"
    handled = 0
    broker = Broker.from_url(url, grace=0.1)

    @broker.subscriber(topic, group="g", concurrency=1, prefetch=1)
    async def handle(message: bytes) -> None:
        nonlocal handled
        await asyncio.sleep(0.02)
        handled += 1

    try:
        async with broker:
            began = time.monotonic()
            for i in range(total // 4):
                await broker.publish(topic, b"serial %d" % i)
            for _ in range(3):
                await broker.publish_many(topic, [b"batch"] * (total // 4))
            took = time.monotonic() - began
            seen = handled
            await broker.stop(grace=0.1)
    finally:
        await drop_topic(url, topic, ("g",))
    return took, seen


# ------------------------------------------------------------- the kill -9 consumer process


def consumer_process(url: str, topic: str, group: str, log: Path) -> subprocess.Popen[bytes]:
    """Start this module as a consumer process (see ``_consume``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.messaging._fault_support", url, topic, group, str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},  # for the shared support module
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@dataclass
class KillResult:
    """What the kill -9 scenario saw."""

    published: list[str]
    handled: list[str]  # every handler run, in order, duplicates included
    effects: list[str]  # the rows the handlers committed
    handled_before_kill: int


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def kill_consumer_mid_batch(url: str, tmp: Path, *, total: int = 120) -> KillResult:
    """Publish ``total`` messages; start a consumer process, kill -9 it once a quarter is
    handled, start another, and wait until every message has its effect row."""
    import psycopg

    from interlink.messaging import Broker

    topic, log = f"kill-{uuid.uuid4().hex[:10]}", tmp / "handled.log"
    with psycopg.connect(PG_URL, autocommit=True) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS il_fault_effects(run TEXT NOT NULL, id TEXT NOT NULL)"
        )

    async def publish() -> list[str]:
        async with Broker.from_url(url) as broker:
            return await broker.publish_many(topic, [b"order %d" % i for i in range(total)])

    published = asyncio.run(publish())

    def effects() -> list[str]:
        with psycopg.connect(PG_URL, autocommit=True) as db:
            rows = db.execute("SELECT id FROM il_fault_effects WHERE run = %s", (topic,))
            return [row[0] for row in rows]

    first = consumer_process(url, topic, topic, log)
    second = None
    try:
        deadline = time.monotonic() + 20
        while len(_lines(log)) < total // 4:
            if time.monotonic() > deadline or first.poll() is not None:
                raise AssertionError("the first consumer never got going")
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = len(_lines(log))
        second = consumer_process(url, topic, topic, log)
        deadline = time.monotonic() + 30
        while len(set(effects())) < total:
            if time.monotonic() > deadline or second.poll() is not None:
                raise AssertionError(f"only {len(set(effects()))} of {total} effects after 30s")
            time.sleep(0.05)
        time.sleep(0.3)  # a duplicate effect, if there were one, would show by now
        second.send_signal(signal.SIGTERM)
        second.wait(15)
        done = effects()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        with psycopg.connect(PG_URL, autocommit=True) as db:
            db.execute("DELETE FROM il_fault_effects WHERE run = %s", (topic,))
            with contextlib.suppress(psycopg.Error):
                db.execute("DELETE FROM interlink_processed WHERE grp = %s", (topic,))
        asyncio.run(drop_topic(url, topic, (topic,)))
    return KillResult(published, _lines(log), done, before)


async def _consume(url: str, topic: str, group: str, log: str) -> None:
    """Handle ``topic`` with effects in PostgreSQL, in the idempotency record's transaction:
    append each message id to ``log`` (handled at least once), insert it into
    ``il_fault_effects`` (effects, exactly once). Runs until SIGTERM."""
    from interlink.messaging import Broker, current_message, current_transaction

    broker = Broker.from_url(url, grace=2.0)
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    @broker.subscriber(topic, group=group, concurrency=4, idempotent=PG_URL)
    async def handle(message: bytes) -> None:
        mid = current_message().envelope.id
        os.write(out, f"{mid}\n".encode())
        await current_transaction().execute(
            "INSERT INTO il_fault_effects(run, id) VALUES ($1, $2)", topic, mid
        )
        await asyncio.sleep(0.01)

    await broker.run()


if __name__ == "__main__":
    asyncio.run(_consume(*sys.argv[1:5]))
