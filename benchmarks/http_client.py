"""Claim: interlink's AsyncClient costs little on top of bare aiohttp, and far less than httpx.

Contenders, against the same loopback server in the same run: interlink ``AsyncClient`` (its
default policies: 10 s timeout, 2 retries with a shared budget, a breaker; propagation of
deadline, correlation id and trace context), bare aiohttp (one ``ClientSession``), bare httpx
(``AsyncClient``), and httpx over aiohttp (``httpx-aiohttp``, when installed) for information.
The server is a minimal HTTP/1.1 keep-alive responder on raw asyncio in a separate process, so
that the client is the bottleneck and its CPU (``time.process_time`` in this process) is its own.

Each contender runs for ``--seconds`` per round at 1 and at 32 concurrent requests, many short
rounds in shuffled order; each figure is the contender's best over its rounds (highest req/s,
lowest latencies and CPU: scheduling noise on a shared machine only ever makes a figure worse).

Targets: at 32 concurrent, interlink's client CPU per request <= 105 % of bare aiohttp's (CPU per
request is the stable figure; req/s swings with the machine's load and is shown for
information); at 1 concurrent, interlink's p50 latency <= bare aiohttp's + 50 us.

Usage: ``python benchmarks/http_client.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _client_load as load
import _report as rep
from _client_load import Contender, Result

BODY = b'{"ok":true,"items":[1,2,3]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CPU_TARGET = 1.05
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


# ------------------------------------------------------------------------------------ clients


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


# ------------------------------------------------------------------------------------ report

HEADERS = load.headers("vs bare aiohttp")


def judge(c: Contender, concurrency: int, r: Result, ref: Result) -> tuple[str, str, bool | None]:
    ratio = f"{r.cpu_us / ref.cpu_us:.2f}x CPU, {r.rps / ref.rps:.2f}x req/s"
    if c.role == "interlink" and concurrency >= 32:
        target = f"<= {CPU_TARGET:.2f}x CPU"
        return ratio, target, r.cpu_us <= CPU_TARGET * ref.cpu_us
    if c.role == "interlink" and concurrency == 1:
        added = r.p50_us - ref.p50_us
        target = f"p50 <= +{ADDED_P50_TARGET_US:.0f} us"
        return f"{ratio}, p50 {added:+.0f} us", target, added <= ADDED_P50_TARGET_US
    return ratio, "", None


def main(argv: list[str] | None = None) -> int:
    args = load.parse_args(argv, __doc__.splitlines()[0], rounds=(20, 2), seconds=(0.3, 0.2))
    if args.serve:
        asyncio.run(_serve())
        return 0
    contenders, took = load.run(__file__, "http://127.0.0.1:{port}", make_contenders, args)
    load_before = os.getloadavg()
    rows, missed = load.table(contenders, "aiohttp", Contender.best, judge)
    text = rep.results_text(
        f"{args.rounds} rounds of {args.seconds:g} s per contender and concurrency, each figure "
        f"the best of its rounds; took {took:.0f} s; load average {load_before[0]:.1f} after the "
        "run.",
        rep.markdown_table(HEADERS, rows),
    )
    print(text)
    print(f"{missed} target(s) missed")
    return rep.publish("http_client", text, args, missed)


if __name__ == "__main__":
    raise SystemExit(main())
