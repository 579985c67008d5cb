"""Claim: interlink's gRPC client costs at most 10 % on top of a bare grpc.aio channel.

Contenders, against the same loopback server in the same run, all with ``service()``'s default
policies (10 s timeout, 2 retries with a shared budget, a breaker) where interlink is involved:

- a bare ``grpc.aio`` channel (the baseline);
- the same bare channel with ``timeout=`` the default ``Service.timeout`` on every call (for
  information: interlink always sets a gRPC deadline, the bare baseline does not; this row says
  what the deadline itself costs);
- a ``grpc.aio`` channel with one no-op interceptor (for information: what grpc.aio's
  interceptor machinery itself costs, whatever the interceptor does);
- ``interlink.grpc.aio_channel`` (the interceptors), outside any request, and inside one (a
  correlation id in the context, so ``x-request-id`` rides on every call);
- ``interlink.grpc.direct_channel`` (the same pipeline, called without grpc.aio's interceptors).

The server is a plain ``grpc.aio`` server (no interceptors) for the example ``MenuService`` in a
separate process, so the client's CPU (``time.process_time`` in this process, grpc's own threads
included) is its own. Each contender runs for ``--seconds`` per round at 1 and at 32 concurrent
unary calls, many short rounds in shuffled order; each figure is the contender's best over its
rounds (highest req/s, lowest latencies and CPU: the least disturbed rounds on a shared machine;
the load average before and after the run is printed with the results).

Targets, at 1 and at 32 concurrent: interlink's throughput >= 90 % of the bare channel's and its
client CPU per request <= 110 % of the bare channel's.

Usage: ``python benchmarks/grpc_client.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the example's generated code: examples.proto
import _harness as h  # noqa: E402

THROUGHPUT_TARGET = 0.90
CPU_TARGET = 1.10


# ------------------------------------------------------------------------------------ server


async def _serve() -> None:
    import grpc
    from examples.proto import food_pb2, food_pb2_grpc

    menu = food_pb2.Menu(
        restaurant_id="r1",
        items=[food_pb2.Item(id=str(n), name=f"item {n}", price_cents=100 * n) for n in range(3)],
    )

    class Menu(food_pb2_grpc.MenuServiceServicer):
        async def GetMenu(self, request: Any, context: Any) -> Any:
            return menu

    server = grpc.aio.server()
    food_pb2_grpc.add_MenuServiceServicer_to_server(Menu(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


@contextmanager
def server_process() -> Iterator[str]:
    """Start the server in its own process; yields its address."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


# ------------------------------------------------------------------------------------ clients

Call = Callable[[], Awaitable[object]]


@dataclass
class Result:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float


@dataclass
class Contender:
    name: str
    role: str  # "bare" (the baseline), "interlink" (has the target) or "info"
    call: Call
    close: Callable[[], Awaitable[None]]
    in_request: bool = False  # run inside a request context: a correlation id to propagate
    results: dict[int, list[Result]] = field(default_factory=dict)

    def best(self, concurrency: int) -> Result:
        """Each figure's best round: scheduling noise only ever makes a figure worse."""
        rounds = self.results[concurrency]
        return Result(
            rps=max(r.rps for r in rounds),
            p50_us=min(r.p50_us for r in rounds),
            p99_us=min(r.p99_us for r in rounds),
            cpu_us=min(r.cpu_us for r in rounds),
        )


async def make_contenders(address: str) -> list[Contender]:
    import grpc
    from examples.proto import food_pb2, food_pb2_grpc

    from interlink.grpc import aio_channel, direct_channel, service
    from interlink.grpc.policy import DEFAULT_TIMEOUT

    class NoOp(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return await continuation(details, request)

    request = food_pb2.MenuRequest(restaurant_id="r1")

    bare_channel = grpc.aio.insecure_channel(address)
    bare = food_pb2_grpc.MenuServiceStub(bare_channel).GetMenu

    async def bare_call() -> object:
        return await bare(request)

    async def bare_deadline_call() -> object:
        return await bare(request, timeout=DEFAULT_TIMEOUT)

    channel = aio_channel(address, service("menu"))
    wrapped = food_pb2_grpc.MenuServiceStub(channel).GetMenu

    async def interlink_call() -> object:
        return await wrapped(request)

    noop_channel = grpc.aio.insecure_channel(address, interceptors=[NoOp()])
    noop = food_pb2_grpc.MenuServiceStub(noop_channel).GetMenu

    async def noop_call() -> object:
        return await noop(request)

    direct = direct_channel(address, service("menu-direct"))
    direct_get = food_pb2_grpc.MenuServiceStub(direct).GetMenu

    async def direct_call() -> object:
        return await direct_get(request)

    noop_name = "no-op grpc.aio interceptor (grpc's own cost)"
    in_request = "interlink aio_channel, in a request (x-request-id sent)"
    deadline_name = f"bare grpc.aio channel, timeout={DEFAULT_TIMEOUT:g} s (the deadline's cost)"
    return [
        Contender("bare grpc.aio channel", "bare", bare_call, bare_channel.close),
        Contender(deadline_name, "info", bare_deadline_call, _nothing),
        Contender(noop_name, "info", noop_call, noop_channel.close),
        Contender("interlink aio_channel (interceptors)", "interlink", interlink_call, _nothing),
        Contender(in_request, "interlink", interlink_call, channel.close, in_request=True),
        Contender("interlink direct_channel", "interlink", direct_call, direct.close),
    ]


async def _nothing() -> None:
    return None


async def run_round(contender: Contender, concurrency: int, seconds: float) -> Result:
    """One round; a contender "in a request" runs with a correlation id in its context, set
    once as a server middleware would, so each call propagates it."""
    if not contender.in_request:
        return await _round(contender.call, concurrency, seconds)
    from interlink.context import use_correlation_id

    with use_correlation_id("0af7651916cd43dd8448eb211c80319c"):
        return await _round(contender.call, concurrency, seconds)


async def _round(call: Call, concurrency: int, seconds: float) -> Result:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        clock = time.perf_counter
        record = latencies.append
        while clock() < stop:
            t0 = clock()
            await call()
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
    address: str, levels: tuple[int, ...], rounds: int, seconds: float
) -> list[Contender]:
    contenders = await make_contenders(address)
    rng = random.Random(7)
    try:
        for c in contenders:  # warm up: connect, fill caches
            await run_round(c, 32, min(seconds, 0.3))
        for concurrency in levels:
            for _ in range(rounds):
                order = contenders[:]
                rng.shuffle(order)
                for c in order:
                    result = await run_round(c, concurrency, seconds)
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
    "vs bare channel",
    "target",
    "result",
)


def table(contenders: list[Contender], levels: tuple[int, ...]) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    missed = 0
    base = next(c for c in contenders if c.role == "bare")
    for concurrency in levels:
        ref = base.best(concurrency)
        for c in contenders:
            r = c.best(concurrency)
            versus = target = verdict = ""
            if c.role != "bare":
                rps, cpu = r.rps / ref.rps, r.cpu_us / ref.cpu_us
                versus = f"{rps:.0%} req/s, {cpu:.0%} CPU, p50 {r.p50_us - ref.p50_us:+.0f} us"
            if c.role == "interlink":
                target = f">= {THROUGHPUT_TARGET:.0%} req/s, <= {CPU_TARGET:.0%} CPU"
                ok = rps >= THROUGHPUT_TARGET and cpu <= CPU_TARGET
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
                    versus,
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
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 25, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 0.2, quick 0.1)")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the docs block")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve())
        return 0
    rounds = args.rounds or (2 if args.quick else 25)
    seconds = args.seconds or (0.1 if args.quick else 0.2)
    levels = (1, 32)
    load = os.getloadavg()
    started = time.perf_counter()
    with server_process() as address:
        contenders = asyncio.run(measure(address, levels, rounds, seconds))
    took = time.perf_counter() - started
    rows, missed = table(contenders, levels)
    text = "\n".join(
        [
            f"Command: `{h.command_line()}`  ",
            f"Run: {h.environment()}; {rounds} rounds of {seconds:g} s per contender and "
            f"concurrency, each figure the best of its rounds; took {took:.0f} s; load average "
            f"{load[0]:.1f} before, {os.getloadavg()[0]:.1f} after.",
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
        h.replace_block("grpc_client", text)
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
