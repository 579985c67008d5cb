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
separate process, so the client's CPU (``time.process_time`` in this process, grpc's own threads
included) is its own. Each contender runs for ``--seconds`` per round at 1 and at 32 concurrent
unary calls, many short rounds in shuffled order; each figure is the contender's best over its
rounds (highest req/s, lowest latencies and CPU: the least disturbed rounds on a shared machine;
the load average before and after the run is printed with the results).

Targets, at 1 and at 32 concurrent, client CPU per call (the stable figure on a shared machine;
req/s is shown for information): ``direct_channel`` <= 110 % of the bare channel's, and the
interceptors (``aio_channel``) <= 110 % of a channel with one no-op ``grpc.aio`` interceptor
(grpc.aio's interceptor machinery alone costs about 10 % of a loopback call, whatever the
interceptor does, so the interceptors are measured against that machinery).

Usage: ``python benchmarks/grpc_client.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the example's generated code: examples.proto
import _client_load as load  # noqa: E402
import _report as rep  # noqa: E402
from _client_load import Contender, Result  # noqa: E402

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


# ------------------------------------------------------------------------------------ clients


async def make_contenders(address: str) -> list[Contender]:
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


# ------------------------------------------------------------------------------------ report

HEADERS = load.headers("vs its reference (bare channel, or no-op interceptor for aio_channel)")


def judge_against_noop(contenders: list[Contender]) -> load.Judge:
    """The judge: ``direct_channel`` against the bare channel, the interceptors against the
    no-op interceptor's figures at the same concurrency, CPU per call (req/s shown)."""
    noop = next(c for c in contenders if c.role == "noop")

    def judge(
        c: Contender, concurrency: int, r: Result, bare: Result
    ) -> tuple[str, str, bool | None]:
        if c.role == "bare":
            return "", "", None
        ref, against = (
            (Contender.best(noop, concurrency), "no-op")
            if c.role == "intercepted"
            else (bare, "bare")
        )
        rps, cpu = r.rps / ref.rps, r.cpu_us / ref.cpu_us
        versus = f"{cpu:.0%} CPU, {rps:.0%} req/s vs {against}, p50 {r.p50_us - ref.p50_us:+.0f} us"
        if c.role not in ("intercepted", "direct"):
            return versus, "", None
        return versus, f"<= {CPU_TARGET:.0%} CPU of {against}", cpu <= CPU_TARGET

    return judge


def main(argv: list[str] | None = None) -> int:
    args = load.parse_args(argv, __doc__.splitlines()[0], rounds=(25, 2), seconds=(0.2, 0.1))
    if args.serve:
        asyncio.run(_serve())
        return 0
    load_before = os.getloadavg()
    contenders, took = load.run(__file__, "127.0.0.1:{port}", make_contenders, args)
    rows, missed = load.table(contenders, "bare", Contender.best, judge_against_noop(contenders))
    text = rep.results_text(
        f"{args.rounds} rounds of {args.seconds:g} s per contender and concurrency, each figure "
        f"the best of its rounds; took {took:.0f} s; load average {load_before[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.",
        rep.markdown_table(HEADERS, rows),
    )
    print(text)
    print(f"{missed} target(s) missed")
    return rep.publish("grpc_client", text, args, missed)


if __name__ == "__main__":
    raise SystemExit(main())
