"""Claim: interlink's AsyncClient costs little on top of bare aiohttp, and far less than httpx.

Contenders, against the same loopback server in the same run: interlink ``AsyncClient`` (its
default policies: 10 s timeout, 2 retries with a shared budget, a breaker; propagation of
deadline, correlation id and trace context), bare aiohttp (one ``ClientSession``), bare httpx
(``AsyncClient``), and httpx over aiohttp (``httpx-aiohttp``, when installed) for information.
The server is a minimal HTTP/1.1 keep-alive responder on raw asyncio in a separate process, so
that the client is the bottleneck and its CPU (``time.process_time`` in this process) is its own.

Each contender runs for ``--seconds`` per round at 1 and at 32 concurrent requests, rounds in
shuffled order; a contender's figures come from its fastest round (the least disturbed one).

Targets: at 32 concurrent, interlink's throughput >= 90 % of bare aiohttp's; at 1 concurrent,
interlink's p50 latency <= bare aiohttp's + 50 us.

Usage: ``python benchmarks/http_client.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as h

BODY = b'{"ok":true,"items":[1,2,3]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
THROUGHPUT_TARGET = 0.90
ADDED_P50_TARGET_US = 50.0


# ------------------------------------------------------------------------------------ server


class _Echo(asyncio.Protocol):
    """Answers every request on the connection with the same small JSON; skips request bodies."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def server_process() -> object:
    """Start the server in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


# ------------------------------------------------------------------------------------ clients

Get = Callable[[], Awaitable[object]]


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float


@dataclass
class Contender:
    name: str
    role: str  # "interlink", "aiohttp" (the baseline), "peer", "info"
    get: Get
    close: Callable[[], Awaitable[None]]
    results: dict[int, list[Result]] = field(default_factory=dict)

    def best(self, concurrency: int) -> Result:
        return max(self.results[concurrency], key=lambda r: r.rps)


async def make_contenders(base: str) -> list[Contender]:
    import aiohttp
    import httpx

    from interlink.http import AsyncClient

    url = base + "/menu"
    out: list[Contender] = []

    client = AsyncClient()
    menu = client.service("menu", url=base)

    async def interlink_get() -> object:
        return (await menu.get("/menu")).content

    out.append(Contender("interlink AsyncClient", "interlink", interlink_get, client.aclose))

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def aiohttp_get() -> object:
        async with session.get(url) as r:
            return await r.read()

    out.append(Contender("bare aiohttp", "aiohttp", aiohttp_get, session.close))

    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))

    async def httpx_get() -> object:
        return (await hx.get(url)).content

    out.append(Contender("bare httpx", "peer", httpx_get, hx.aclose))

    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        return out

    hxa = httpx.AsyncClient(
        transport=AiohttpTransport(
            client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        )
    )

    async def hxa_get() -> object:
        return (await hxa.get(url)).content

    out.append(Contender("httpx over aiohttp (httpx-aiohttp)", "info", hxa_get, hxa.aclose))
    return out


async def run_round(get: Get, concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        clock = time.perf_counter
        record = latencies.append
        while clock() < stop:
            t0 = clock()
            await get()
            record(clock() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    n = len(latencies)
    return Result(
        rps=n / wall,
        p50_us=latencies[n // 2] * 1e6,
        p99_us=latencies[min(n - 1, int(n * 0.99))] * 1e6,
        cpu_us=cpu / n * 1e6,
    )


async def measure(
    base: str, levels: tuple[int, ...], rounds: int, seconds: float
) -> list[Contender]:
    contenders = await make_contenders(base)
    rng = random.Random(7)
    try:
        for c in contenders:  # warm up: open connections, fill caches
            await run_round(c.get, 32, min(seconds, 0.3))
        for concurrency in levels:
            for _ in range(rounds):
                order = contenders[:]
                rng.shuffle(order)
                for c in order:
                    result = await run_round(c.get, concurrency, seconds)
                    c.results.setdefault(concurrency, []).append(result)
    finally:
        for c in contenders:
            await c.close()
    return contenders


# ------------------------------------------------------------------------------------ report

HEADERS = (
    "concurrency",
    "contender",
    "req/s",
    "p50 (us)",
    "p99 (us)",
    "client CPU (us/req)",
    "vs bare aiohttp",
    "target",
    "result",
)


def table(contenders: list[Contender], levels: tuple[int, ...]) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    missed = 0
    base = next(c for c in contenders if c.role == "aiohttp")
    for concurrency in levels:
        ref = base.best(concurrency)
        for c in contenders:
            r = c.best(concurrency)
            ratio = f"{r.rps / ref.rps:.2f}x req/s"
            target = verdict = ""
            if c.role == "interlink" and concurrency >= 32:
                target = f">= {THROUGHPUT_TARGET:.0%} of req/s"
                ok = r.rps >= THROUGHPUT_TARGET * ref.rps
                verdict = "pass" if ok else "**FAIL**"
                missed += not ok
            if c.role == "interlink" and concurrency == 1:
                added = r.p50_us - ref.p50_us
                ratio += f", p50 {added:+.0f} us"
                target = f"p50 <= +{ADDED_P50_TARGET_US:.0f} us"
                ok = added <= ADDED_P50_TARGET_US
                verdict = "pass" if ok else "**FAIL**"
                missed += not ok
            rows.append(
                [
                    str(concurrency) if c is contenders[0] else "",
                    c.name,
                    f"{r.rps:,.0f}",
                    f"{r.p50_us:,.0f}",
                    f"{r.p99_us:,.0f}",
                    f"{r.cpu_us:,.0f}",
                    ratio,
                    target,
                    verdict,
                ]
            )
    return rows, missed


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |"]
    lines.append(
        "|" + "|".join("---:" if 2 <= i <= 5 else "---" for i in range(len(HEADERS))) + "|"
    )
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (seconds)")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 5, quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 1, quick 0.3)")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the docs block")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    rounds = args.rounds or (1 if args.quick else 5)
    seconds = args.seconds or (0.3 if args.quick else 1.0)
    levels = (1, 32)
    started = time.perf_counter()
    with server_process() as base:
        contenders = asyncio.run(measure(base, levels, rounds, seconds))
    took = time.perf_counter() - started
    rows, missed = table(contenders, levels)
    text = "\n".join(
        [
            f"Command: `{h.command_line()}`  ",
            f"Run: {h.environment()}; {rounds} rounds of {seconds:g} s per contender and "
            f"concurrency, best round shown; took {took:.0f} s.",
            "",
            markdown(rows),
            "",
        ]
    )
    print(text)
    print(f"{missed} target(s) missed")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.update_docs:
        h.replace_block("http_client", text)
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
