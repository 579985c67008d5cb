"""Service discovery: how fast a dead instance leaves rotation and a new one joins, per backend.

Three instances of an HTTP service (aiohttp, one subprocess each, registered with a 3 s TTL)
serve two clients that send steady load side by side: one with passive outlier ejection (the
default: 5 failures in a row eject) and one relying on the registry's TTL alone
(``outlier=None``). Both retry a failed attempt on another instance (interlink ``Retry``, 2
retries, no delay), so the caller only sees an error when every attempt fails. Then:

1. ``kill -9`` one instance. Measured per client: the time from the kill to the last attempt
   sent to it ("out after"), the attempts that failed in between, and the calls whose caller
   saw an error.
2. start a fourth instance. Measured: the time from its registration to its first request.

Also the cost of ``resolver.pick()`` (and ``pick + done``) from the cache, which must not touch
the network: target <= 2 us.

Backends: sqlite (a file), redis (the local server), nats (the local server, JetStream KV) and
etcd (a private server, installed from Debian's packages if missing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h
import _report as rep

from interlink import Retry
from interlink.discovery import OutlierOptions, Resolver, ServiceInstance
from interlink.discovery.backends.memory import MemoryRegistry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVICE = "bench-http"
TTL = 3.0
HEADERS = ("benchmark", "measure", "value", "", "target", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    instance_id: str
    port: int
    proc: subprocess.Popen[str]
    registered_at: float = 0.0


def start_server(url: str, instance_id: str) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_discovery_server.py"), url, instance_id, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"instance {instance_id} did not start")
    return Server(instance_id, port, proc, float(line[1]))


@dataclass
class Client:
    """One load-generating client and what it saw."""

    name: str
    resolver: Resolver
    attempts: list[tuple[float, str, bool]] = field(default_factory=list)  # (wall, id, ok)
    calls: int = 0
    caller_errors: int = 0


async def load(client: Client, session: Any, stop: asyncio.Event, workers: int) -> None:
    import aiohttp

    retry = Retry(2, backoff=0.0, max_backoff=0.0, jitter="none")
    timeout = aiohttp.ClientTimeout(total=1.0)

    async def attempt() -> str:
        picked = await client.resolver.apick(SERVICE)
        iid = picked.instance.instance_id
        try:
            async with session.get(f"http://{picked.instance.address}/", timeout=timeout) as r:
                if r.status >= 500:
                    raise RuntimeError(f"HTTP {r.status}")
                body: str = await r.text()
        except BaseException:
            picked.done(False)
            client.attempts.append((time.time(), iid, False))
            raise
        picked.done(True)
        client.attempts.append((time.time(), iid, True))
        return body

    async def worker() -> None:
        while not stop.is_set():
            client.calls += 1
            try:
                await retry.acall(attempt)
            except Exception:
                client.caller_errors += 1
            await asyncio.sleep(0.004)

    await asyncio.gather(*(worker() for _ in range(workers)))


@dataclass
class Result:
    backend: str
    out: dict[str, float]
    failed: dict[str, int]
    caller: dict[str, int]
    rps: float
    join: float


async def scenario(backend: str, url: str, quick: bool) -> Result:
    import aiohttp

    servers = [start_server(url, f"i{n}") for n in (1, 2, 3)]
    clients = [
        Client("passive", Resolver.from_url(url, outlier=OutlierOptions())),
        Client("ttl", Resolver.from_url(url, outlier=None)),
    ]
    stop = asyncio.Event()
    try:
        for c in clients:
            await c.resolver.prefetch(SERVICE)
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.ensure_future(load(c, session, stop, 4)) for c in clients]
            await asyncio.sleep(0.5 if quick else 1.0)
            victim = servers[0]
            killed = time.time()
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()
            await asyncio.sleep(TTL + 1.5)
            fourth = await asyncio.to_thread(start_server, url, "i4")
            servers.append(fourth)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        for c in clients:
            await c.resolver.aclose()
        for s in servers:
            if s.proc.poll() is None:
                s.proc.terminate()
        for s in servers:
            s.proc.wait(10)

    out: dict[str, float] = {}
    failed: dict[str, int] = {}
    caller: dict[str, int] = {}
    joins = []
    for c in clients:
        to_dead = [t for t, iid, _ in c.attempts if iid == victim.instance_id and t >= killed]
        out[c.name] = (max(to_dead) - killed) if to_dead else 0.0
        failed[c.name] = sum(1 for t, iid, ok in c.attempts if t >= killed and not ok)
        caller[c.name] = c.caller_errors
        first = [t for t, iid, ok in c.attempts if iid == "i4" and ok]
        joins.append((min(first) - fourth.registered_at) if first else float("inf"))
    span = max(t for t, _, _ in clients[0].attempts) - min(t for t, _, _ in clients[0].attempts)
    rps = len(clients[0].attempts) / span if span else 0.0
    return Result(backend, out, failed, caller, rps, max(joins))


def start_etcd() -> tuple[str, int, str]:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-etcd.sh"), "--start"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid, client_url, data = done.stdout.split()
    return "etcd://" + client_url.split("://", 1)[1], int(pid), data


def pick_cost(quick: bool) -> tuple[float, float]:
    """ns per pick() and per pick()+done(True), 3 instances, power of two choices."""

    async def run() -> tuple[float, float]:
        registry = MemoryRegistry()
        for n in (1, 2, 3):
            await registry.register(ServiceInstance(SERVICE, f"i{n}", "127.0.0.1", 9000 + n))
        async with Resolver(registry) as resolver:
            await resolver.prefetch(SERVICE)
            pick = resolver.pick
            number = 20_000 if quick else 200_000

            def only_pick() -> None:
                pick(SERVICE)

            def pick_done() -> None:
                pick(SERVICE).done(True)

            a = min(timeit.repeat(only_pick, number=number, repeat=5)) / number
            b = min(timeit.repeat(pick_done, number=number, repeat=5)) / number
        await registry.aclose()
        return a * 1e9, b * 1e9

    return asyncio.run(run())


def rows_of(results: list[Result], pick_ns: tuple[float, float]) -> list[h.Row]:
    rows: list[h.Row] = []

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    for r in results:
        b = f"{r.backend} (~{r.rps:.0f} attempts/s per client)"
        rows += [
            h.Row(
                b,
                "passive ejection: dead instance out after",
                f"{r.out['passive']:.2f} s",
                "",
                "<= 1 s",
                verdict(r.out["passive"] <= 1.0),
            ),
            h.Row(
                b,
                "passive ejection: failed attempts / caller errors",
                f"{r.failed['passive']} / {r.caller['passive']}",
                "",
                "a handful / 0",
                verdict(r.failed["passive"] <= 10 and r.caller["passive"] == 0),
            ),
            h.Row(
                b,
                "TTL only: dead instance out after",
                f"{r.out['ttl']:.2f} s",
                "",
                f"<= TTL ({TTL:g} s)",
                verdict(r.out["ttl"] <= TTL + 0.1),
            ),
            h.Row(
                b,
                "TTL only: failed attempts / caller errors",
                f"{r.failed['ttl']} / {r.caller['ttl']}",
                "",
                "(no target)",
                "",
            ),
            h.Row(
                b,
                "new instance: first request after registering",
                f"{r.join:.2f} s",
                "",
                "<= 1 s",
                verdict(r.join <= 1.0),
            ),
        ]
    rows += [
        h.Row(
            "pick from the cache (3 instances, p2c)",
            "resolver.pick()",
            f"{pick_ns[0] / 1000:.2f} us",
            "",
            "<= 2 us",
            verdict(pick_ns[0] <= 2000),
        ),
        h.Row(
            "pick from the cache (3 instances, p2c)",
            "pick() + done(True)",
            f"{pick_ns[1] / 1000:.2f} us",
            "",
            "",
            "",
        ),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sqlite and redis only, shorter")
    rep.add_output_options(parser, docs="rewrite docs/performance.md")
    parser.add_argument("--backends", default="", help="comma-separated subset to run")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    chosen = ["sqlite", "redis"] if args.quick else ["sqlite", "redis", "nats", "etcd"]
    if args.backends:
        chosen = args.backends.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in chosen:
            etcd: tuple[int, str] | None = None
            if backend == "sqlite":
                url = f"sqlite:///{tmp}/registry.db"
            elif backend == "redis":
                url = "redis://127.0.0.1:6379/0"
            elif backend == "nats":
                url = "nats://127.0.0.1:4222"
            else:
                url, pid, data = start_etcd()
                etcd = (pid, data)
            try:
                print(f"-- {backend}", flush=True)
                results.append(asyncio.run(scenario(backend, url, args.quick)))
            finally:
                if etcd is not None:
                    os.kill(etcd[0], signal.SIGKILL)
                    subprocess.run(["rm", "-rf", etcd[1]], check=False)
    pick_ns = pick_cost(args.quick)
    took = time.perf_counter() - started
    rows = rows_of(results, pick_ns)
    h.print_table(
        "service discovery: convergence after kill -9 and after a new instance", rows, HEADERS
    )
    failed = [r for r in rows if r.failed]
    print(f"{len(failed)} target(s) missed; run took {took:.0f} s")
    text = rep.results_text(f"took {took:.0f} s.", h.to_markdown(rows, HEADERS))
    return rep.publish("discovery", text, args, len(failed))


if __name__ == "__main__":
    raise SystemExit(main())
