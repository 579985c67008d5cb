"""Claim: interlink's AsyncClient executes at most 5 % more CPU instructions per request than bare
aiohttp at 32 concurrent requests.

CPU time per request swings by 10 % and more from run to run on a shared 2-CPU machine;
instructions counted by valgrind (callgrind) are repeatable to about half a per cent, so this is
the figure that shows what the client's own code costs. Against the minimal keep-alive server of
``benchmarks/http_client.py`` (in a process of its own, not under valgrind), each contender runs
in a fresh interpreter under callgrind twice, for ``--small`` and ``--large`` requests at 32
concurrent (after a warm-up); the difference divided by the difference in requests is its count
per request, start-up and imports cancelling out. Needs valgrind; takes a few minutes.

Usage: ``python benchmarks/http_instructions.py [--small N] [--large N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _client_load as load  # noqa: E402
import _harness as h  # noqa: E402

TARGET = 1.05
CONCURRENCY = 32


async def _drive(kind: str, requests: int, base: str) -> None:
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

        async def get() -> object:
            async with session.get(base + "/menu") as r:
                return await r.read()

        close = session.close
    else:
        from interlink.http import AsyncClient

        client = AsyncClient()
        menu = client.service("menu", url=base)

        async def get() -> object:
            return (await menu.get("/menu")).content

        close = client.aclose
    await asyncio.gather(*(get() for _ in range(CONCURRENCY)))  # connections open, caches warm
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await get()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await close()


def _instructions(kind: str, requests: int, base: str) -> int:
    return h.callgrind_instructions(
        [sys.executable, __file__, "--drive", kind, str(requests), base]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument("--drive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        kind, requests, base = args.drive
        asyncio.run(_drive(kind, int(requests), base))
        return 0
    per_request: dict[str, float] = {}
    with load.server_process(str(HERE / "http_client.py")) as port:
        base = f"http://127.0.0.1:{port}"
        for kind in ("aiohttp", "interlink"):
            small = _instructions(kind, args.small, base)
            large = _instructions(kind, args.large, base)
            per_request[kind] = (large - small) / (args.large - args.small)
    ratio = per_request["interlink"] / per_request["aiohttp"]
    print(f"bare aiohttp: {per_request['aiohttp']:,.0f} instructions per request")
    print(f"interlink AsyncClient: {per_request['interlink']:,.0f} instructions per request")
    verdict = "pass" if ratio <= TARGET else "FAIL"
    print(f"ratio {ratio:.3f} (target <= {TARGET:.2f}): {verdict}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
