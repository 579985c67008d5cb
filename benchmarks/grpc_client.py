"""Claim: interlink's gRPC clients cost at most 10 % of client CPU on top of what they stand on.

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
separate process, so the client's work is its own. Two measurements, at 1 and at 32 concurrent
unary calls:

- CPU instructions per call, counted by valgrind (callgrind), the judged figure: repeatable to
  about a per cent whatever else the machine runs. One client process per concurrency runs
  under callgrind; after a warm-up it runs ``--calls`` calls of each contender per round,
  ``--instruction-rounds`` rounds in shuffled order, the counters zeroed before and dumped after
  each contender's calls (``--zero-before=getppid``, ``--dump-before=getpgrp``: the client
  calls ``os.getppid()`` and ``os.getpgrp()`` around them), so every figure covers the calls
  only, grpc's own threads included. A contender's figure is its median over the rounds. The
  heap left by the imports and the warm-up is frozen (``gc.freeze``) so that no full collection
  lands in a phase, and interlink's services run on a clock paced to the native call rate
  (``valgrind_paced``: callgrind slows every call about 50-fold, which would otherwise send the
  breaker down its low-traffic path).
- client CPU time per call (``time.process_time`` of this process, grpc's threads included)
  and req/s, for information: ``--rounds`` rounds of ``--seconds`` each in shuffled order, each
  figure the contender's median over its rounds (CPU time swings by several per cent from run
  to run on a shared machine; the load average before and after is printed).

Targets, at 1 and at 32 concurrent, instructions per call: ``direct_channel`` <= 110 % of the
bare channel's, and the interceptors (``aio_channel``) <= 110 % of a channel with one no-op
``grpc.aio`` interceptor (grpc.aio's interceptor machinery alone costs about 30 % of a loopback
call's instructions, whatever the interceptor does, so the interceptors are measured against
that machinery).

Usage: ``python benchmarks/grpc_client.py [--quick] [--calls N] [--instruction-rounds N]
[--markdown PATH] [--update-docs] [--strict]`` (needs valgrind; about 10 minutes, ``--quick``
a few).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the example's generated code: examples.proto
import _client_load as load  # noqa: E402
import _report as rep  # noqa: E402
from _client_load import Contender, Result  # noqa: E402

CPU_TARGET = 1.10
#: How many times slower than natively the client runs under callgrind (about 25 ms against
#: 0.5 ms per call at 1 concurrent here); see ``valgrind_paced``.
VALGRIND_SLOWDOWN = 50.0

Clock = Callable[[], float]


def valgrind_paced(slowdown: float = VALGRIND_SLOWDOWN) -> Clock:
    """A monotonic clock that runs ``slowdown`` times slower than the real one, for interlink's
    services under callgrind: there every call takes about ``slowdown`` times longer, and the
    breaker and retry budget, whose bookkeeping depends on how many calls come per second,
    would see a trickle of about 40 calls/s and take their low-traffic path (the breaker books
    every success with a clock reading instead of every 64th: some 10k instructions per call
    that a service called at this benchmark's native pace, thousands of calls/s, never
    spends). On this clock they see the call rate they see natively."""
    real = time.monotonic
    start = real()

    def paced() -> float:
        return start + (real() - start) / slowdown

    return paced


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


# ------------------------------------------------------------------------------------ clients


async def make_contenders(address: str, clock: Clock = time.monotonic) -> list[Contender]:
    """The contenders against ``address``; ``clock``: interlink's (the services' breaker,
    retry budget and deadline)."""
    import grpc
    from examples.proto import food_pb2, food_pb2_grpc

    from interlink.context import use_correlation_id
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

    channel = aio_channel(address, service("menu", clock=clock))
    wrapped = food_pb2_grpc.MenuServiceStub(channel).GetMenu

    async def interlink_call() -> object:
        return await wrapped(request)

    noop_channel = grpc.aio.insecure_channel(address, interceptors=[NoOp()])
    noop = food_pb2_grpc.MenuServiceStub(noop_channel).GetMenu

    async def noop_call() -> object:
        return await noop(request)

    direct = direct_channel(address, service("menu-direct", clock=clock))
    direct_get = food_pb2_grpc.MenuServiceStub(direct).GetMenu

    async def direct_call() -> object:
        return await direct_get(request)

    # in a request: a correlation id in the context, set once per round as a server middleware
    # would, so each call propagates it
    in_a_request = functools.partial(use_correlation_id, "0af7651916cd43dd8448eb211c80319c")
    noop_name = "no-op grpc.aio interceptor (grpc's own cost)"
    in_request = "interlink aio_channel, in a request (x-request-id sent)"
    deadline_name = f"bare grpc.aio channel, timeout={DEFAULT_TIMEOUT:g} s (the deadline's cost)"
    return [
        Contender("bare grpc.aio channel", "bare", bare_call, bare_channel.close),
        Contender(deadline_name, "info", bare_deadline_call, _nothing),
        Contender(noop_name, "noop", noop_call, noop_channel.close),
        Contender("interlink aio_channel (interceptors)", "intercepted", interlink_call, _nothing),
        Contender(in_request, "intercepted", interlink_call, channel.close, context=in_a_request),
        Contender("interlink direct_channel", "direct", direct_call, direct.close),
    ]


async def _nothing() -> None:
    return None


# ------------------------------------------------------------------------------ instructions


async def _count_phases(address: str, concurrency: int, calls: int, rounds: int) -> list[str]:
    """Run under callgrind: each contender's ``calls`` calls per round, between the two marker
    calls; the contenders' names in the order their phases ran."""
    contenders = await make_contenders(address, valgrind_paced())
    rng = random.Random(7)
    order: list[str] = []
    try:
        for c in contenders:  # warm up: connections open, caches filled
            with c.context():
                for _ in range(4):
                    await asyncio.gather(*(c.call() for _ in range(concurrency)))
        # what the imports and the warm-up left moves out of the collector's way: a full
        # collection over it (millions of instructions) would land in whichever phase it fell in
        gc.collect()
        gc.freeze()
        for _ in range(rounds):
            shuffled = contenders[:]
            rng.shuffle(shuffled)
            for c in shuffled:
                with c.context():
                    left = calls

                    async def worker(call: load.Call = c.call) -> None:
                        nonlocal left
                        while left > 0:
                            left -= 1
                            await call()

                    os.getppid()  # callgrind zeroes its counters here
                    await asyncio.gather(*(worker() for _ in range(concurrency)))
                    os.getpgrp()  # and dumps them here
                order.append(c.name)
    finally:
        for c in contenders:
            await c.close()
    return order


def _instructions(address: str, concurrency: int, calls: int, rounds: int) -> dict[str, float]:
    """Each contender's median instructions per call at ``concurrency``, from one client
    process under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--dump-instr=no",
                "--zero-before=getppid",
                "--dump-before=getpgrp",
                sys.executable,
                __file__,
                "--count-phases",
                address,
                str(concurrency),
                str(calls),
                str(rounds),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"callgrind run failed:\n{done.stderr[-3000:]}")
        order = json.loads(done.stdout.strip().splitlines()[-1])
        counts: dict[str, list[float]] = {}
        for n, name in enumerate(order, start=1):
            found = re.search(r"^summary: (\d+)", Path(f"{out}.{n}").read_text(), re.M)
            if found is None:
                raise RuntimeError(f"no instruction count in dump {n} of {len(order)}")
            counts.setdefault(name, []).append(int(found.group(1)) / calls)
    return {name: statistics.median(figures) for name, figures in counts.items()}


def _contender_roles(address: str) -> list[tuple[str, str]]:
    async def made() -> list[tuple[str, str]]:
        contenders = await make_contenders(address)
        for c in contenders:
            await c.close()
        return [(c.name, c.role) for c in contenders]

    return asyncio.run(made())


def instruction_table(address: str, args: argparse.Namespace) -> tuple[str, int]:
    """The judged table (instructions per call at each concurrency) and the missed targets."""
    roles = _contender_roles(address)
    calls = {1: args.calls, 32: args.calls * 2}
    with concurrent.futures.ThreadPoolExecutor(len(load.LEVELS)) as pool:  # one CPU each
        futures = {
            n: pool.submit(_instructions, address, n, calls[n], args.instruction_rounds)
            for n in load.LEVELS
        }
        per_call = {n: f.result() for n, f in futures.items()}
    rows: list[list[str]] = []
    missed = 0
    for n in load.LEVELS:
        counts = per_call[n]
        bare = next(counts[name] for name, role in roles if role == "bare")
        noop = next(counts[name] for name, role in roles if role == "noop")
        for name, role in roles:
            ref, against = (noop, "no-op") if role == "intercepted" else (bare, "bare")
            ratio = counts[name] / ref
            judged = role in ("intercepted", "direct")
            ok = ratio <= CPU_TARGET
            missed += judged and not ok
            rows.append(
                [
                    str(n) if name == roles[0][0] else "",
                    name,
                    f"{counts[name] / 1000:,.1f}k",
                    "" if role == "bare" else f"{ratio:.1%} of {against}",
                    f"<= {CPU_TARGET:.0%} of {against}" if judged else "",
                    ("pass" if ok else "**FAIL**") if judged else "",
                ]
            )
    headers = ("concurrency", "contender", "instructions per call", "vs reference", "target")
    table = rep.markdown_table((*headers, "result"), rows)
    head = (
        f"Instructions per call (judged): valgrind callgrind, one client process per "
        f"concurrency, {args.instruction_rounds} rounds of {calls[1]} calls at 1 concurrent and "
        f"{calls[32]} at 32 per contender in shuffled order, median of the rounds."
    )
    return f"{head}\n\n{table}", missed


# ------------------------------------------------------------------------------------ report

HEADERS = load.headers("vs its reference (bare channel, or no-op interceptor for aio_channel)")


def median(c: Contender, concurrency: int) -> Result:
    """Each figure's median over the contender's rounds."""
    rounds = c.results[concurrency]
    return Result(
        rps=statistics.median(r.rps for r in rounds),
        p50_us=statistics.median(r.p50_us for r in rounds),
        p99_us=statistics.median(r.p99_us for r in rounds),
        cpu_us=statistics.median(r.cpu_us for r in rounds),
    )


def judge_against_noop(contenders: list[Contender]) -> load.Judge:
    """For information: ``direct_channel`` against the bare channel, the interceptors against
    the no-op interceptor's figures at the same concurrency, CPU time per call and req/s."""
    noop = next(c for c in contenders if c.role == "noop")

    def judge(
        c: Contender, concurrency: int, r: Result, bare: Result
    ) -> tuple[str, str, bool | None]:
        if c.role == "bare":
            return "", "", None
        ref, against = (
            (median(noop, concurrency), "no-op") if c.role == "intercepted" else (bare, "bare")
        )
        rps, cpu = r.rps / ref.rps, r.cpu_us / ref.cpu_us
        versus = f"{cpu:.0%} CPU, {rps:.0%} req/s vs {against}, p50 {r.p50_us - ref.p50_us:+.0f} us"
        return versus, "", None

    return judge


def parse(argv: list[str] | None) -> argparse.Namespace:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--count-phases"]:
        return argparse.Namespace(count_phases=argv[1:], serve=False)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--calls", type=int, help="calls per round under callgrind at 1 concurrent")
    extra.add_argument("--instruction-rounds", type=int, help="rounds under callgrind")
    known, rest = extra.parse_known_args(argv)
    args = load.parse_args(rest, __doc__.splitlines()[0], rounds=(15, 2), seconds=(0.3, 0.1))
    args.calls = known.calls or (100 if args.quick else 300)
    args.instruction_rounds = known.instruction_rounds or (1 if args.quick else 3)
    args.count_phases = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.count_phases:
        address, concurrency, calls, rounds = args.count_phases
        order = asyncio.run(_count_phases(address, int(concurrency), int(calls), int(rounds)))
        print(json.dumps(order))
        return 0
    if args.serve:
        asyncio.run(_serve())
        return 0
    load_before = os.getloadavg()
    with load.server_process(__file__) as port:
        judged, missed = instruction_table(f"127.0.0.1:{port}", args)
    contenders, took = load.run(__file__, "127.0.0.1:{port}", make_contenders, args)
    rows, _ = load.table(contenders, "bare", median, judge_against_noop(contenders))
    text = rep.results_text(
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after.",
        judged,
        f"Client CPU time per call and req/s (for information): {args.rounds} rounds of "
        f"{args.seconds:g} s per contender and concurrency in shuffled order, each figure the "
        f"median of its rounds; took {took:.0f} s.",
        rep.markdown_table(HEADERS, rows),
    )
    print(text)
    print(f"{missed} target(s) missed")
    return rep.publish("grpc_client", text, args, missed)


if __name__ == "__main__":
    raise SystemExit(main())
