"""Claim: interlink's Kafka backend moves messages about as fast as raw aiokafka, and faster
than FastStream's Kafka broker, with the messaging targets of the other backends.

One run, one process, against a private Tansu broker (memory storage) that
``scripts/ensure-kafka.sh --start`` starts on a free loopback port and this script stops:

- publish with acknowledgement (``acks=all``), 1 KiB messages, serial and windowed (1,000
  in flight), then consume in a consumer group with offsets committed: interlink >= 0.9x raw
  aiokafka for bytes, >= 0.7x for pydantic payloads; >= 2x FastStream on consume (pydantic).
- A consumer-group join takes about a second on Tansu for every contender alike, and nothing
  is delivered before it: each consume measurement's clock starts at its first message.

Each contender runs ``rounds`` times in shuffled order; its figure is its best round (serial
publishing: the median ratio within a round, as ``messaging.py`` does).

Usage: ``python benchmarks/kafka.py [--quick] [--rounds N] [--markdown PATH] [--update-docs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # a script folder, not a package
import _report as rep
from _messaging_shared import (
    BATCH,
    BYTES,
    CONCURRENCY,
    PREFETCH,
    TIME_LIMIT,
    Order,
    _payload,
    _raw_bytes,
    timed_publish,
    unique,
)
from messaging import HEADERS, Measure, best_rates, paired_rates, phase_rows

from interlink.messaging import Broker

ROOT = Path(__file__).resolve().parent.parent
RAW = "aiokafka"
PARTITIONS = 4  # the kafka:// backend's default for the topics it creates


async def create_topic(bootstrap: str, name: str) -> None:
    """A topic laid out as interlink creates one (4 partitions), for every contender alike."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()


# CPU seconds of this process per consumed message (µs), by (contender, pydantic), one entry
# per round: what a loaded machine leaves comparable when msgs/s is at the scheduler's mercy
CONSUME_CPU: dict[tuple[str, bool], list[float]] = {}


class FirstCounter:
    """Counts handled messages; the clock of a measurement starts at the first one (the
    group join before it is the broker's, the same for every contender). ``done`` notes
    the process's CPU time per message since then under ``name``."""

    def __init__(self, target: int, name: str, pydantic: bool) -> None:
        self.n = 0
        self.target = target
        self.first = 0.0
        self.cpu = 0.0
        self.key = (name, pydantic)
        self.reached = asyncio.Event()
        self.started = asyncio.Event()

    def hit(self) -> None:
        if self.n == 0:
            self.first = time.perf_counter()
            self.cpu = time.process_time()
            self.started.set()
        self.n += 1
        if self.n >= self.target:
            self.reached.set()

    def done(self) -> tuple[int, float]:
        """Messages after the first and the seconds since it."""
        n, seconds = self.n - 1, time.perf_counter() - self.first
        if n > 0:
            cpu = (time.process_time() - self.cpu) / n * 1e6
            CONSUME_CPU.setdefault(self.key, []).append(cpu)
        return n, seconds

    async def wait(self) -> tuple[int, float]:
        await asyncio.wait_for(self.started.wait(), 30)
        left = self.first + TIME_LIMIT * 3 - time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reached.wait(), max(left, 0.001))
        return self.done()


class KafkaRaw:
    """aiokafka: send_and_wait, send + gather, a consumer group with manual commits."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    async def _producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        return producer

    async def _topic(self, producer: Any, pydantic: bool) -> str:
        name = unique("kr")
        await create_topic(self.bootstrap, name)
        await producer.send_and_wait(name, _raw_bytes(pydantic))  # created, warmed up
        return name

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        producer = await self._producer()
        try:
            topic = await self._topic(producer, pydantic)
            return await timed_publish(
                n, lambda: producer.send_and_wait(topic, _raw_bytes(pydantic))
            )
        finally:
            await producer.stop()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        producer = await self._producer()
        try:
            topic = await self._topic(producer, pydantic)

            async def send_window() -> None:
                # each message serialized, as in the serial case and messaging.py's raw clients
                await asyncio.gather(
                    *[await producer.send(topic, _raw_bytes(pydantic)) for _ in range(1000)]
                )

            return await timed_publish(n, send_window, 1000)
        finally:
            await producer.stop()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        from aiokafka import AIOKafkaConsumer

        producer = await self._producer()
        try:
            topic = await self._topic(producer, pydantic)
            body = _raw_bytes(pydantic)
            for _ in range(0, n, 1000):
                await asyncio.gather(*[await producer.send(topic, body) for _ in range(1000)])
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id="g",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=BATCH,
            session_timeout_ms=2000,
            heartbeat_interval_ms=300,
        )
        got = FirstCounter(n + 1, RAW, pydantic)
        await consumer.start()
        try:
            while got.n <= n and (not got.n or time.perf_counter() - got.first < TIME_LIMIT * 3):
                batch = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
                for records in batch.values():
                    for record in records:
                        if pydantic:
                            Order.model_validate_json(record.value)
                        got.hit()
                if batch:
                    await consumer.commit()
            return got.done()
        finally:
            await consumer.stop()


class KafkaFastStream:
    """FastStream's KafkaBroker in its documented form (a subscriber with a group), with
    ``acks="all"`` as the other contenders."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap

    def _broker(self) -> Any:
        from faststream.kafka import KafkaBroker

        # acks=all as the other two publish with (FastStream's own default is acks=1)
        return KafkaBroker(self.bootstrap, acks="all", logger=None)

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        broker = self._broker()
        await broker.connect()
        try:
            topic = unique("fs")
            await create_topic(self.bootstrap, topic)
            await broker.publish(BYTES, topic)
            return await timed_publish(n, lambda: broker.publish(_payload(pydantic), topic))
        finally:
            await broker.stop()

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        broker = self._broker()
        await broker.connect()
        try:
            topic = unique("fs")
            await create_topic(self.bootstrap, topic)
            await broker.publish(BYTES, topic)

            async def send_window() -> None:
                message = _payload(pydantic)  # publish_batch overflows its buffer at 1 KiB x 16
                await asyncio.gather(*[broker.publish(message, topic) for _ in range(1000)])

            return await timed_publish(n, send_window, 1000)
        finally:
            await broker.stop()

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        broker = self._broker()
        topic = unique("fs")
        got = FirstCounter(n + 1, "FastStream", pydantic)

        async def handle_bytes(body: bytes) -> None:
            got.hit()

        async def handle_model(body: Order) -> None:
            got.hit()

        handler: Any = handle_model if pydantic else handle_bytes
        broker.subscriber(
            topic,
            group_id="g",
            auto_offset_reset="earliest",
            max_records=BATCH,
            session_timeout_ms=2000,
            heartbeat_interval_ms=300,
        )(handler)
        await create_topic(self.bootstrap, topic)
        await broker.connect()
        try:
            await broker.publish(_payload(pydantic), topic)
            for _ in range(0, n, 1000):
                message = _payload(pydantic)
                await asyncio.gather(*[broker.publish(message, topic) for _ in range(1000)])
            await broker.start()
            return await got.wait()
        finally:
            await broker.stop()


class KafkaInterlink:
    """interlink's Broker on the ``kafka://`` URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def serial(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        async with Broker.from_url(self.url) as broker:
            await broker.publish(topic, BYTES)
            return await timed_publish(n, lambda: broker.publish(topic, _payload(pydantic)))

    async def window(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        async with Broker.from_url(self.url) as broker:
            await broker.publish(topic, BYTES)
            return await timed_publish(
                n, lambda: broker.publish_many(topic, [_payload(pydantic)] * 1000), 1000
            )

    async def consume(self, n: int, pydantic: bool) -> tuple[int, float]:
        topic = unique("il")
        got = FirstCounter(n + 1, "interlink", pydantic)
        broker = Broker.from_url(self.url, grace=1.0)
        if pydantic:

            @broker.subscriber(topic, group="g", concurrency=CONCURRENCY, prefetch=PREFETCH)
            async def handle_model(message: Order) -> None:
                got.hit()

        else:

            @broker.subscriber(topic, group="g", concurrency=CONCURRENCY, prefetch=PREFETCH)
            async def handle_bytes(message: bytes) -> None:
                got.hit()

        async with Broker.from_url(self.url) as loader:
            await loader.backend.ensure_group(topic, "g")  # type: ignore[attr-defined]
            await loader.publish(topic, _payload(pydantic))
            for _ in range(0, n, 1000):
                await loader.publish_many(topic, [_payload(pydantic)] * 1000)
        await broker.start()
        try:
            return await got.wait()
        finally:
            await broker.stop()


def start_broker() -> tuple[int, str]:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-kafka.sh"), "--start"],
        capture_output=True,
        text=True,
        timeout=330,
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    pid, address, _ = done.stdout.split()
    return int(pid), address


async def run(address: str, quick: bool, rounds: int, rng: random.Random) -> list[h.Row]:
    url = f"kafka://{address}?session_timeout=2&heartbeat=0.3"
    raw, fast, il = KafkaRaw(address), KafkaFastStream(address), KafkaInterlink(url)
    scale = 4 if quick else 1
    rows: list[h.Row] = []
    for phase, n in (("publish serial", 1000 // scale), ("publish windowed", 20000 // scale)):
        attr = "serial" if phase == "publish serial" else "window"
        for pydantic in (False, True):
            contenders: dict[str, Measure] = {
                RAW: getattr(raw, attr),
                "interlink": getattr(il, attr),
                "FastStream": getattr(fast, attr),
            }
            if attr == "serial":
                rates = await paired_rates(
                    contenders, raw=RAW, n=n, pydantic=pydantic, rounds=rounds * 3, rng=rng
                )
            else:
                rates = await best_rates(contenders, n, pydantic, rounds, rng)
            kind = "pydantic" if pydantic else "bytes"
            rows += phase_rows(f"kafka {phase}, {kind}", rates, RAW, pydantic, False)
    for pydantic in (False, True):
        contenders = {RAW: raw.consume, "interlink": il.consume, "FastStream": fast.consume}
        rates = await best_rates(contenders, 20000 // scale, pydantic, rounds, rng)
        kind = "pydantic" if pydantic else "bytes"
        rows += phase_rows(f"kafka consume + commit, {kind}", rates, RAW, pydantic, True)
    return rows


def cpu_table() -> str:
    """The consume phases' CPU time per message (best round), shown beside the msgs/s: the
    same-run comparison that holds up when other work shares the CPUs."""
    lines = [
        "CPU time of the consuming process per message (µs, best round; lower is better):",
        "",
        "| payload | aiokafka | interlink | FastStream | aiokafka / interlink |",
        "|---|---:|---:|---:|---:|",
    ]
    for pydantic in (False, True):
        best = {
            name: min(CONSUME_CPU.get((name, pydantic), [float("nan")]))
            for name in (RAW, "interlink", "FastStream")
        }
        ratio = best[RAW] / best["interlink"] if best["interlink"] else float("nan")
        lines.append(
            f"| {'pydantic' if pydantic else 'bytes'} | {best[RAW]:.1f} | {best['interlink']:.1f}"
            f" | {best['FastStream']:.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 2, quick 1)")
    rep.add_output_options(
        parser,
        markdown="also write the table as markdown here",
        docs="rewrite the results block of docs/performance.md",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    rounds = args.rounds or (1 if args.quick else 2)
    started = time.perf_counter()
    pid, address = start_broker()
    try:
        rows = asyncio.run(run(address, args.quick, rounds, random.Random(1)))
    finally:
        os.kill(pid, signal.SIGKILL)
    took = time.perf_counter() - started
    title = "Kafka (Tansu 0.6.0, memory storage, 1 broker; acks=all)"
    h.print_table(title, rows, HEADERS)
    failed = [r for r in rows if r.failed]
    cpu = cpu_table()
    print(cpu)
    print(f"{len(failed)} target(s) missed; run took {took:.0f} s")
    text = rep.results_text(
        f"took {took:.0f} s.", f"**{title}**", h.to_markdown(rows, HEADERS), cpu
    )
    return rep.publish("kafka", text, args, len(failed))


if __name__ == "__main__":
    raise SystemExit(main())
