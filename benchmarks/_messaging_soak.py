"""Claim: under default settings a broker's disk does not grow without bound, and no process
leaks memory, when a topic carries a steady stream that one group keeps up with.

One backend per run: publish 1 KiB messages at ``--rate`` msg/s (windowed batches every 50
ms) for ``--seconds`` while a group of 16 handlers acks them, sampling every 10 s the
process's RSS and the backend's disk: NATS, the topic stream's bytes and messages; SQLite, the
database file and its WAL. Prints the samples and a summary line.

Usage: ``python benchmarks/_messaging_soak.py nats|sqlite [--seconds 180] [--rate 2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from interlink.messaging import Broker

NATS = "nats://127.0.0.1:4222"
BODY = b"x" * 1024


def rss_mb() -> float:
    """This process's resident set, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def nats_disk(topic: str) -> tuple[float, int]:
    """(MB, messages) of the topic's stream."""
    import nats

    nc = await nats.connect(NATS)
    try:
        js = nc.jetstream()
        name = await js.find_stream_name_by_subject(topic)
        info = await js.stream_info(name)
        return info.state.bytes / 1e6, info.state.messages
    finally:
        await nc.close()


def sqlite_disk(path: Path) -> tuple[float, int]:
    """(MB of the database and its WAL, 0)."""
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return size / 1e6, 0


async def soak(kind: str, seconds: float, rate: int) -> Path:
    topic = f"soak-{uuid.uuid4().hex[:8]}"
    folder = Path(tempfile.mkdtemp(prefix="interlink-soak-"))
    db = folder / "broker.db"
    url = NATS if kind == "nats" else f"sqlite:///{db}"
    handled = 0
    broker = Broker.from_url(url, grace=2.0)

    @broker.subscriber(topic, group="g", concurrency=16)
    async def handle(message: bytes) -> None:
        nonlocal handled
        handled += 1

    async def disk() -> tuple[float, int]:
        return await nats_disk(topic) if kind == "nats" else sqlite_disk(db)

    published, peak = 0, 0.0
    async with broker:
        began = time.monotonic()
        next_sample = began
        per_tick = max(1, rate // 20)
        print("t (s)  published  handled  RSS MB  disk MB  stream msgs", flush=True)
        while (now := time.monotonic()) - began < seconds:
            if now >= next_sample:
                mb, msgs = await disk()
                peak = max(peak, mb)
                print(
                    f"{now - began:5.0f}  {published:9d}  {handled:7d}  {rss_mb():6.1f}  "
                    f"{mb:7.1f}  {msgs:11d}",
                    flush=True,
                )
                next_sample += 10
            await broker.publish_many(topic, [BODY] * per_tick)
            published += per_tick
            await asyncio.sleep(max(0.0, began + published / rate - time.monotonic()))
        took = time.monotonic() - began
        deadline = time.monotonic() + 30
        while handled < published and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded
            await asyncio.sleep(0.1)
        mb, msgs = await disk()
        peak = max(peak, mb)
    print(
        f"{kind}: {published} published in {took:.0f} s ({published / took:.0f} msg/s), "
        f"{handled} handled; disk at the end {mb:.1f} MB ({msgs} stream msgs), peak "
        f"{peak:.1f} MB; RSS at the end {rss_mb():.1f} MB",
        flush=True,
    )
    if kind == "nats":
        import nats

        nc = await nats.connect(NATS)
        try:
            js = nc.jetstream()
            await js.delete_stream(await js.find_stream_name_by_subject(topic))
        finally:
            await nc.close()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("kind", choices=("nats", "sqlite"))
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    shutil.rmtree(asyncio.run(soak(args.kind, args.seconds, args.rate)))


if __name__ == "__main__":
    main()
