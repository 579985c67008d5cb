"""An orchestrator process for the crash tests, and the fake services its saga calls.

Run as ``python saga_worker.py --store URL --table T --services PATH --owner NAME``: it drives
``place_order`` sagas until killed. The services (order, payment, inventory, notification)
live in one SQLite file and deduplicate by idempotency key, as real ones must; every call is
also logged with its start and end time and process id, so the test can check that no two
attempts of one saga ever overlapped and that each effect happened once.

The saga's data carries its own failure plan: which step fails for good, how many times
``authorize_payment`` fails before it works, and whether the refund is broken for good (the
only way a saga may end in NEEDS_ATTENTION).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from interlink import Retry
from interlink.saga import Orchestrator, SagaDefinition, SagaStore, Step, StepContext

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS calls (id INTEGER PRIMARY KEY, saga_id TEXT, step TEXT, "
    "phase TEXT, key TEXT, attempt INTEGER, pid INTEGER, started REAL, ended REAL, outcome TEXT)",
    "CREATE TABLE IF NOT EXISTS orders (saga_id TEXT PRIMARY KEY, status TEXT)",
    "CREATE TABLE IF NOT EXISTS payments (key TEXT PRIMARY KEY, saga_id TEXT, status TEXT)",
    "CREATE TABLE IF NOT EXISTS inventory (key TEXT PRIMARY KEY, saga_id TEXT, status TEXT)",
    "CREATE TABLE IF NOT EXISTS notifications (key TEXT PRIMARY KEY, saga_id TEXT, kind TEXT)",
    "CREATE TABLE IF NOT EXISTS tries (key TEXT PRIMARY KEY, n INTEGER)",
]


class Declined(Exception):
    """A service said no (the plan made it)."""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def create_schema(path: str) -> None:
    conn = connect(path)
    for sql in SCHEMA:
        conn.execute(sql)
    conn.close()


class Services:
    """The four services, one SQLite file, one connection per worker thread."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self._path)
        return conn

    def call(
        self, ctx: StepContext, effect: Callable[[sqlite3.Connection, StepContext], Any]
    ) -> Any:
        db = self._db()
        phase = "compensation" if ctx.compensating else "action"
        cur = db.execute(
            "INSERT INTO calls (saga_id, step, phase, key, attempt, pid, started) "
            "VALUES (?,?,?,?,?,?,?)",
            (
                ctx.saga_id,
                ctx.step,
                phase,
                ctx.idempotency_key,
                ctx.attempt,
                os.getpid(),
                time.time(),
            ),
        )
        call_id = cur.lastrowid
        time.sleep(random.random() * 0.003)  # widen the window a kill can land in
        outcome = "ok"
        db.execute("BEGIN IMMEDIATE")
        try:
            # A refusal commits too: what the service did before saying no (count a try) stays.
            return effect(db, ctx)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            db.execute(
                "UPDATE calls SET ended=?, outcome=? WHERE id=?", (time.time(), outcome, call_id)
            )
            db.execute("COMMIT")


def _plan(ctx: StepContext) -> dict[str, Any]:
    data: dict[str, Any] = ctx.data
    return data


def _tries(db: sqlite3.Connection, key: str) -> int:
    db.execute(
        "INSERT INTO tries (key, n) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1",
        (key,),
    )
    return int(db.execute("SELECT n FROM tries WHERE key=?", (key,)).fetchone()[0])


def create_order(db: sqlite3.Connection, ctx: StepContext) -> dict[str, str]:
    db.execute("INSERT OR IGNORE INTO orders VALUES (?, 'CONFIRMED')", (ctx.saga_id,))
    return {"order": ctx.saga_id}


def cancel_order(db: sqlite3.Connection, ctx: StepContext) -> None:
    db.execute("UPDATE orders SET status='CANCELLED' WHERE saga_id=?", (ctx.saga_id,))
    db.execute(
        "INSERT OR IGNORE INTO notifications VALUES (?, ?, 'cancelled')",
        (ctx.idempotency_key, ctx.saga_id),
    )


def authorize_payment(db: sqlite3.Connection, ctx: StepContext) -> dict[str, str]:
    plan = _plan(ctx)
    if plan.get("fail") == "authorize_payment":
        raise Declined("card declined")
    if _tries(db, ctx.idempotency_key) <= plan.get("transient", 0):
        raise ConnectionError("payment service unavailable")
    db.execute(
        "INSERT OR IGNORE INTO payments VALUES (?, ?, 'authorized')",
        (ctx.idempotency_key, ctx.saga_id),
    )
    return {"payment": ctx.idempotency_key}


def refund_payment(db: sqlite3.Connection, ctx: StepContext) -> None:
    if _plan(ctx).get("stuck_refund"):
        raise ConnectionError("refunds are broken")
    db.execute("UPDATE payments SET status='refunded' WHERE saga_id=?", (ctx.saga_id,))


def reserve_inventory(db: sqlite3.Connection, ctx: StepContext) -> None:
    if _plan(ctx).get("fail") == "reserve_inventory":
        raise Declined("out of stock")
    db.execute(
        "INSERT OR IGNORE INTO inventory VALUES (?, ?, 'reserved')",
        (ctx.idempotency_key, ctx.saga_id),
    )


def release_inventory(db: sqlite3.Connection, ctx: StepContext) -> None:
    db.execute("UPDATE inventory SET status='released' WHERE saga_id=?", (ctx.saga_id,))


def notify(db: sqlite3.Connection, ctx: StepContext) -> None:
    db.execute(
        "INSERT OR IGNORE INTO notifications VALUES (?, ?, 'confirmed')",
        (ctx.idempotency_key, ctx.saga_id),
    )


def definition(services_path: str) -> SagaDefinition:
    """``place_order`` against the services in ``services_path``."""
    services = Services(services_path)

    def step(
        effect: Callable[[sqlite3.Connection, StepContext], Any],
    ) -> Callable[[StepContext], Any]:
        def run(ctx: StepContext) -> Any:
            return services.call(ctx, effect)

        run.__name__ = effect.__name__
        return run

    fast = Retry(retries=3, backoff=0.005, max_backoff=0.02, jitter="none")
    comp = Retry(retries=2, backoff=0.005, max_backoff=0.02, jitter="none")
    return SagaDefinition(
        "place_order",
        [
            Step("create_order", step(create_order), step(cancel_order), compensation_retry=comp),
            Step(
                "authorize_payment",
                step(authorize_payment),
                step(refund_payment),
                retry=fast,
                compensation_retry=comp,
            ),
            Step(
                "reserve_inventory",
                step(reserve_inventory),
                step(release_inventory),
                retry=fast,
                compensation_retry=comp,
            ),
            Step("notify", step(notify), retry=fast),
        ],
        max_interruptions=20,
    )


async def main(args: argparse.Namespace) -> None:
    store = SagaStore.from_url(args.store, table=args.table)
    orchestrator = Orchestrator(
        store,
        [definition(args.services)],
        owner=args.owner,
        lease=args.lease,
        poll_interval=0.05,
        max_concurrent=args.concurrency,
    )
    await orchestrator.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--services", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
