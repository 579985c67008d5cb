"""Claim: a slow or dead downstream does not drag its caller down when the call goes through
interlink's policies with a cached fallback.

Service A (user-facing, HTTP) calls service B for a menu. B goes through four phases:
healthy -> slow (2 s per call) -> dead (process killed: connection refused) -> healthy again
(restarted on the same port). Two copies of A, each in its own process, take the same open-loop
load (``--rate`` requests per second), one after the other so that neither slows the other down
on a small machine:

- **interlink**: ``AsyncClient`` with a 50 ms call timeout, 1 retry within it, a breaker (opens
  at 50 % failures over >= 5 calls in a 2 s window, 2 s cooldown) and ``stale_if_error`` (the
  last good menu), behind ``InterlinkMiddleware``;
- **bare httpx**: ``httpx.AsyncClient(timeout=2.0)``; an error is answered 502.

A counts as successful when it answers 200 (a stale menu counts: the user gets a menu).
Targets while B is slow or dead: interlink-A's p99 <= 100 ms and >= 99.9 % successful; after B is
back, the breaker is CLOSED again within cooldown + one trial (measured from the moment B
listens again, polling A every 10 ms).

Usage: ``python benchmarks/cascade.py [--quick] [--markdown PATH] [--update-docs] [--strict]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report as rep

COOLDOWN = 2.0
CALL_TIMEOUT = 0.05
P99_TARGET_MS = 100.0
SUCCESS_TARGET = 0.999
MENU = json.dumps({"menu": ["soup", "noodles", "dumplings"]}).encode()


# ------------------------------------------------------------------------------ the services


async def _reply(send: Any, status: int, body: bytes, headers: list[Any] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def b_app() -> Any:
    """B: the menu, fast or (after ``/_mode/slow``) two seconds late."""
    state = {"slow": False}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        path = scope["path"]
        if path.startswith("/_mode/"):
            state["slow"] = path.endswith("/slow")
            await _reply(send, 200, b"{}")
            return
        if state["slow"]:
            await asyncio.sleep(2.0)
        await _reply(send, 200, MENU)

    return app


def a_interlink_app(b_url: str) -> Any:
    """A with interlink: call timeout, retry, breaker, stale-if-error fallback."""
    from interlink.http import AsyncClient, InterlinkMiddleware, ServicePolicies

    policies = ServicePolicies(
        timeout=CALL_TIMEOUT,
        retries=1,
        backoff=0.002,
        max_backoff=0.005,
        failure_rate_threshold=0.5,
        minimum_calls=5,
        breaker_window=2.0,
        cooldown=COOLDOWN,
        stale_if_error=600,
    )
    holder: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if "b" not in holder:
            holder["client"] = AsyncClient(policies=policies)
            holder["b"] = holder["client"].service("b", url=b_url)
        b = holder["b"]
        if scope["path"] == "/_breaker":
            await _reply(
                send, 200, json.dumps({"state": b.downstream.breaker.state.value}).encode()
            )
            return
        try:
            r = await b.get("/menu")
        except Exception:
            await _reply(send, 503, b'{"error":"menu unavailable"}')
            return
        status = 200 if r.is_success else 502
        await _reply(send, status, r.content, [(b"x-source", r.source.encode())])

    return InterlinkMiddleware(app)


def a_bare_app(b_url: str) -> Any:
    """A with bare httpx and a 2 s timeout."""
    import httpx

    holder: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if "client" not in holder:
            holder["client"] = httpx.AsyncClient(timeout=2.0)
        try:
            r = await holder["client"].get(b_url + "/menu")
        except Exception:
            await _reply(send, 502, b'{"error":"menu unavailable"}')
            return
        await _reply(send, 200 if r.status_code == 200 else 502, r.content)

    return app


def serve_role(role: str, port: int, b_url: str) -> None:
    import uvicorn

    if role == "b":
        app = b_app()
    elif role == "a-interlink":
        app = a_interlink_app(b_url)
    else:
        app = a_bare_app(b_url)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False, ws="none")


# ------------------------------------------------------------------------------ orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(role: str, port: int, b_url: str = "") -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--port", str(port), "--b-url", b_url]
    )
    wait_listening(port)
    return proc


def wait_listening(port: int, timeout: float = 15.0) -> float:
    """Block until ``port`` accepts connections; returns the time it did."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(5)


@dataclass
class Sample:
    phase: str
    variant: str
    ms: float
    ok: bool


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    recovery_s: float | None = None


async def load(
    urls: dict[str, str], rate: float, phase: list[str], stop: asyncio.Event, run: Run
) -> None:
    """Open-loop load: ``rate`` requests per second to each A, whatever their latency."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        tasks: set[asyncio.Task[None]] = set()

        async def one(variant: str, url: str, current: str) -> None:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as r:
                    await r.read()
                    ok = r.status == 200
            except Exception:
                ok = False
            run.samples.append(Sample(current, variant, (time.perf_counter() - t0) * 1e3, ok))

        interval = 1.0 / rate
        next_at = time.perf_counter()
        while not stop.is_set():
            for variant, url in urls.items():
                task = asyncio.create_task(one(variant, url, phase[0]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*tasks)


async def poll_closed(url: str, since: float, limit: float) -> float | None:
    """Seconds from ``since`` until A reports its breaker CLOSED (None if not within limit)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while time.monotonic() - since < limit:
            async with session.get(url) as r:
                if (await r.json())["state"] == "closed":
                    return time.monotonic() - since
            await asyncio.sleep(0.01)
    return None


def scenario(variant: str, phase_s: dict[str, float], rate: float, run: Run) -> None:
    """B and one A (``variant``) through the four phases, samples added to ``run``."""
    b_port, a_port = free_port(), free_port()
    b_url = f"http://127.0.0.1:{b_port}"
    role = "a-interlink" if variant == "interlink" else "a-bare"
    with processes() as procs:
        procs.append(start("b", b_port))
        procs.append(start(role, a_port, b_url))
        urls = {variant: f"http://127.0.0.1:{a_port}/menu"}

        async def drive() -> None:
            import aiohttp

            phase = ["healthy"]
            stop = asyncio.Event()
            loader = asyncio.create_task(load(urls, rate, phase, stop, run))
            await asyncio.sleep(phase_s["healthy"])
            async with aiohttp.ClientSession() as s:
                await (await s.get(b_url + "/_mode/slow")).read()
            phase[0] = "slow"
            await asyncio.sleep(phase_s["slow"])
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            phase[0] = "dead"
            await asyncio.sleep(phase_s["dead"])
            procs[0] = await asyncio.to_thread(start, "b", b_port)
            back = time.monotonic()
            phase[0] = "recovered"
            if variant == "interlink":
                run.recovery_s = await poll_closed(
                    f"http://127.0.0.1:{a_port}/_breaker", back, COOLDOWN * 3
                )
            await asyncio.sleep(max(0.0, phase_s["recovered"] - (time.monotonic() - back)))
            stop.set()
            await loader

        asyncio.run(drive())


# ------------------------------------------------------------------------------ report

HEADERS = (
    "phase",
    "A calls B with",
    "requests",
    "successful",
    "p50 (ms)",
    "p99 (ms)",
    "target",
    "result",
)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def report(run: Run) -> tuple[list[list[str]], int]:
    rows: list[list[str]] = []
    missed = 0
    for phase in ("healthy", "slow", "dead", "recovered"):
        for variant in ("interlink", "bare httpx"):
            got = [s for s in run.samples if s.phase == phase and s.variant == variant]
            if not got:
                continue
            ok = sum(s.ok for s in got) / len(got)
            p50, p99 = pct([s.ms for s in got], 0.5), pct([s.ms for s in got], 0.99)
            target = verdict = ""
            if variant == "interlink" and phase in ("slow", "dead"):
                target = f"p99 <= {P99_TARGET_MS:.0f} ms, >= {SUCCESS_TARGET:.1%} ok"
                good = p99 <= P99_TARGET_MS and ok >= SUCCESS_TARGET
                verdict = "pass" if good else "**FAIL**"
                missed += not good
            rows.append(
                [
                    phase if variant == "interlink" else "",
                    variant,
                    str(len(got)),
                    f"{ok:.2%}",
                    f"{p50:,.1f}",
                    f"{p99:,.1f}",
                    target,
                    verdict,
                ]
            )
    limit = COOLDOWN + CALL_TIMEOUT + 0.1
    rec = run.recovery_s
    good = rec is not None and rec <= limit
    missed += not good
    rows.append(
        [
            "recovered",
            "interlink: B listening -> breaker CLOSED",
            "",
            "",
            "n/a" if rec is None else f"{rec * 1e3:,.0f}",
            "",
            f"<= cooldown + one trial ({limit:.2f} s)",
            "pass" if good else "**FAIL**",
        ]
    )
    return rows, missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--b-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="short phases (about 15 s in all)")
    parser.add_argument("--rate", type=float, help="requests per second to A (default 100)")
    rep.add_output_options(parser)
    args = parser.parse_args(argv)
    if args.role:
        serve_role(args.role, args.port, args.b_url)
        return 0
    if args.quick:
        phases = {"healthy": 2.0, "slow": 4.0, "dead": 4.0, "recovered": 4.0}
    else:
        phases = {"healthy": 4.0, "slow": 12.0, "dead": 12.0, "recovered": 6.0}
    rate = args.rate or 100.0
    started = time.perf_counter()
    run = Run()
    for variant in ("interlink", "bare httpx"):  # one after the other: each A gets the machine
        scenario(variant, phases, rate, run)
    took = time.perf_counter() - started
    rows, missed = report(run)
    spans = ", ".join(f"{k} {v:g} s" for k, v in phases.items())
    text = rep.results_text(
        f"{rate:g} requests/s to A, each variant in turn; phases: {spans}; took {took:.0f} s.",
        rep.markdown_table(HEADERS, rows),
    )
    print(text)
    print(f"{missed} target(s) missed")
    return rep.publish("cascade", text, args, missed)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
