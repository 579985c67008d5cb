"""Claim: how many orders per second the whole reference system sustains on this machine with
p99 of ``POST /orders`` <= 100 ms, on embedded defaults (SQLite everywhere) and on NATS +
PostgreSQL, and where the CPU goes (per service).

The six services and the gateway run as processes (``interlink.supervisor``); an open-loop
load generator in this process places orders through the gateway (each with its customer's JWT)
at a fixed rate in steps (each step ``--step`` seconds) and measures every answer's latency
there. A step is *sustained* when >= 99 % of its orders got a
202, p99 <= 100 ms, and the sagas keep up (every order of the step final within ``--step``
seconds after it). CPU per service is read from ``/proc/<pid>/stat`` over each step. No target
number: the table names the rate, the busiest service, and what would move it.

Usage: ``python benchmarks/reference_system.py [--quick] [--markdown PATH] [--update-docs]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the examples

import _report as rep  # a script folder, not a package
from examples.food_delivery import scenarios

from interlink.supervisor import Supervisor, load_system

ROOT = Path(__file__).resolve().parents[1]
P99_TARGET_MS = 100.0
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


async def step(run: scenarios.Run, rate: float, seconds: float) -> dict[str, Any]:
    """One load step at ``rate``: latency, success, saga catch-up, CPU per service."""
    sup = run.supervisor
    pids = {n: s["pid"] for n, s in sup.status().items()}
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    me_before = time.process_time()
    stats = scenarios.PhaseStats(f"{rate:.0f}/s")
    run.phase = stats
    run.rate = rate
    run.accepted.clear()
    started = time.monotonic()
    await run.load(seconds)
    wall = time.monotonic() - started
    cpu = {n: (cpu_seconds(p) - cpu_before[n]) / wall for n, p in pids.items()}
    cpu["load generator"] = (time.process_time() - me_before) / wall
    deadline_at = time.monotonic() + seconds
    snap = await run.snapshot()
    while snap["active"] and time.monotonic() < deadline_at:
        await asyncio.sleep(0.25)
        snap = await run.snapshot()
    kept_up = snap["active"] == 0
    return {
        "rate": rate,
        "achieved": stats.requests / wall,
        "success": stats.success,
        "p50": stats.percentile(0.5),
        "p99": stats.percentile(0.99),
        "kept_up": kept_up,
        "cpu": cpu,
        "ok": stats.success >= 0.99 and stats.percentile(0.99) <= P99_TARGET_MS and kept_up,
    }


async def measure(label: str, env: dict[str, str], rates: list[float], seconds: float) -> Any:
    """Step through ``rates`` on one deployment until a step is not sustained."""
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="food-bench-") as tmp:
        system = load_system(ROOT / "examples/food_delivery/system.yaml", state_dir=tmp)
        env = {"FOOD_LOG_LEVEL": "WARNING", **env}
        async with Supervisor(system, env=env, output=lambda _: None) as sup:
            await sup.wait_healthy(90)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
                run = scenarios.Run(sup, rates[0])
                run._session = session
                run.phase = scenarios.PhaseStats("warm-up")
                await run.load(0, total=50)
                await run.settle(20)
                steps = []
                misses = 0
                for rate in rates:
                    result = await step(run, rate, seconds)
                    steps.append(result)
                    print(
                        f"{label:>22} {rate:6.0f}/s: p50 {result['p50']:6.1f} ms, p99 "
                        f"{result['p99']:7.1f} ms, ok {result['success']:.1%}, sagas kept up "
                        f"{result['kept_up']}",
                        flush=True,
                    )
                    misses = 0 if result["ok"] else misses + 1
                    if misses >= 2:
                        break
    return steps


def table(label: str, steps: list[dict[str, Any]]) -> tuple[str, str]:
    sustained = [s for s in steps if s["ok"]]
    best = max(sustained, key=lambda s: s["rate"]) if sustained else None
    rows = []
    for s in steps:
        busiest = sorted(
            ((n, c) for n, c in s["cpu"].items() if n != "load generator"),
            key=lambda x: -x[1],
        )[:3]
        rows.append(
            [
                label,
                f"{s['rate']:.0f}",
                f"{s['p50']:.1f}",
                f"{s['p99']:.1f}",
                f"{s['success']:.1%}",
                "yes" if s["kept_up"] else "no",
                ", ".join(f"{n} {c:.0%}" for n, c in busiest),
                "sustained" if s["ok"] else "missed",
            ]
        )
    text = rep.markdown_table(
        (
            "deployment",
            "orders/s offered",
            "p50 ms",
            "p99 ms",
            "202s",
            "sagas kept up",
            "CPU (share of one core), busiest first",
            "",
        ),
        rows,
    )
    summary = (
        f"{label}: {best['rate']:.0f} orders/s sustained (p99 {best['p99']:.0f} ms)"
        if best
        else f"{label}: no step sustained"
    )
    return text, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps, fewer rates")
    parser.add_argument("--step", type=float, default=None, help="seconds per load step")
    parser.add_argument("--embedded-only", action="store_true", help="skip NATS + PostgreSQL")
    rep.add_output_options(parser)
    args = parser.parse_args()
    seconds = args.step or (4.0 if args.quick else 8.0)
    rates = [25.0, 50.0, 100.0] if args.quick else [25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0]
    namespace = f"foodbench{uuid.uuid4().hex[:6]}"
    deployments = [("embedded (SQLite)", {})]
    if not args.embedded_only:
        deployments.append(
            (
                "NATS + PostgreSQL",
                {
                    "FOOD_NAMESPACE": namespace,
                    "INTERLINK_BROKER": "nats://127.0.0.1:4222",
                    "INTERLINK_SAGA_STORE": POSTGRES,
                    "FOOD_ORDER_DB": POSTGRES,
                    "FOOD_PAYMENT_DB": POSTGRES,
                    "FOOD_NOTIFICATION_DB": POSTGRES,
                },
            )
        )
    blocks, summaries = [], []
    try:
        for label, env in deployments:
            steps = asyncio.run(measure(label, env, rates, seconds))
            text, summary = table(label, steps)
            blocks.append(text)
            summaries.append(summary)
    finally:
        if not args.embedded_only:
            asyncio.run(_drop(namespace))
    run = f"{seconds:.0f} s per step, open-loop load through the gateway, seven processes"
    text = rep.results_text(run, *blocks, "\n".join(f"- {s}" for s in summaries))
    print(text)
    return rep.publish("reference_system", text, args, 0)


async def _drop(namespace: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        for row in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE $1", f"{namespace}%"
        ):
            await conn.execute(f'DROP TABLE IF EXISTS "{row["tablename"]}" CASCADE')
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
