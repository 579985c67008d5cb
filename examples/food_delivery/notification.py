"""notification: tells the customer what became of the order (a log line and a page).

An idempotent consumer of ``notifications.send``: each notification is stored once by its
message id, however often the broker delivers it. ``GET /`` is the page, ``GET /stats`` the
counts per kind, ``GET /notifications?order_id=...`` the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
from collections.abc import AsyncIterator

from examples.food_delivery import runtime
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from interlink.context import correlation_id
from interlink.messaging import Broker, Envelope

log = logging.getLogger("food.notification")


def build(settings: runtime.Settings) -> tuple[Starlette, Broker]:
    """The notification service: its subscription, its page and its stats."""
    broker = Broker.from_url(settings.broker, idempotency=settings.idempotency)
    db = runtime.Database(settings.database)
    table = settings.table("notifications")

    @broker.subscriber(settings.topic(runtime.NOTIFY), group="notification", concurrency=8)
    async def send(env: Envelope) -> None:
        """Store and log one notification (a repeated message id changes nothing)."""
        note = json.loads(env.payload)
        async with db.transaction() as tx:
            added = await tx.execute(
                f"INSERT INTO {table} (message_id, order_id, kind, text, correlation_id) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                env.id,
                note["order_id"],
                note["kind"],
                note["text"],
                correlation_id() or "",
            )
        if added:
            log.info("to customer %s: %s", note.get("customer_id", "?"), note["text"])

    async def page(_: Request) -> HTMLResponse:
        async with db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT order_id, kind, text FROM {table} ORDER BY rowid DESC LIMIT 50"
                if not db.postgres
                else f"SELECT order_id, kind, text FROM {table} ORDER BY ctid DESC LIMIT 50"
            )
        items = "".join(
            f"<li><b>{html.escape(k)}</b> {html.escape(o)}: {html.escape(t)}</li>"
            for o, k, t in rows
        )
        return HTMLResponse(
            "<!doctype html><title>Notifications</title><h1>Latest notifications</h1>"
            f"<ul>{items}</ul>"
        )

    async def listing(request: Request) -> object:
        order_id = request.query_params.get("order_id", "")
        async with db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT order_id, kind, text, correlation_id FROM {table} WHERE order_id = $1",
                order_id,
            )
        return runtime.json_response(
            [{"order_id": o, "kind": k, "text": t, "correlation_id": c} for o, k, t, c in rows]
        )

    async def stats() -> dict[str, dict[str, int]]:
        async with db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT kind, COUNT(*), COUNT(DISTINCT order_id) FROM {table} GROUP BY kind"
            )
        return {str(k): {"sent": int(n), "orders": int(d)} for k, n, d in rows}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await db.open(
            [
                f"CREATE TABLE IF NOT EXISTS {table} (message_id TEXT PRIMARY KEY, "
                "order_id TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, "
                "correlation_id TEXT NOT NULL)"
            ]
        )
        async with broker:
            yield
        await db.close()

    app = runtime.http_app(
        stats,
        routes=[Route("/", page), Route("/notifications", listing)],
        lifespan=lifespan,
    )
    return app, broker


async def main(stop: asyncio.Event | None = None) -> None:
    """Consume notifications; serve the page; registered in discovery."""
    settings = runtime.Settings.from_env("notification")
    runtime.configure_logging("notification")
    app, _ = build(settings)
    await runtime.serve_http(settings, app, stop)


if __name__ == "__main__":
    runtime.run(main)
