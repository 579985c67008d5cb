"""order: the system's entry. ``POST /orders`` is the synchronous path the customer waits for;
everything after the 202 runs asynchronously in the order saga.

``POST /orders`` validates the cart, asks **menu** (through a breaker with the last good menu as
fallback) and **pricing** (no fallback: no price, no order) over gRPC within a 100 ms budget,
writes the order and its ``OrderPlaced`` event in one transaction (the outbox), and answers
202 with the order id. The event starts the saga here, in this service (idempotently, by order
id), so a crash between the commit and the saga's start loses nothing:

    accept_order -> authorize_payment (payment) -> assign_courier (dispatch) -> notify
    declined: refund (nothing to undo) -> cancel the order + tell the customer
    no courier: refund -> cancel the order + tell the customer
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from examples.food_delivery import runtime
from examples.proto import food_pb2, food_pb2_grpc
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interlink import CircuitBreaker, Fallback, Retry, RetryBudget, deadline
from interlink import grpc as ilgrpc
from interlink.context import correlation_id
from interlink.discovery import Resolver
from interlink.errors import DeadlineExceeded, InterlinkError
from interlink.grpc import local
from interlink.http import InterlinkMiddleware
from interlink.messaging import Broker, Envelope
from interlink.outbox import Outbox, OutboxRelay
from interlink.resilience.events import FallbackUsed, PolicyEvent
from interlink.saga import (
    Orchestrator,
    SagaDefinition,
    SagaStatus,
    SagaStore,
    Send,
    Step,
    StepContext,
)

log = logging.getLogger("food.order")

#: What the customer may wait for: menu and pricing together.
SYNC_BUDGET = 0.1

#: A saga command the broker did not take (stopped, restarting: no acknowledgement within 5 s)
#: is sent again with backoff for about half a minute, so a broker restart delays orders rather
#: than cancelling them; a refusal is final whatever this says, and the saga's 120 s timeout
#: bounds it all. Each resend carries the same idempotency key: participants act once.
SEND_RETRY = Retry(5, backoff=1.0, max_backoff=8.0)

#: The customer the gateway authenticated (its JWT's ``sub``). The gateway strips this header
#: from what clients send, and this service listens on loopback only, so it can be trusted.
IDENTITY = "x-auth-subject"


class Line(BaseModel):
    """One line of the cart."""

    item_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=20)


class Cart(BaseModel):
    """The body of ``POST /orders``."""

    customer_id: str = Field(min_length=1, max_length=64)
    restaurant_id: str = Field(min_length=1, max_length=64)
    items: list[Line] = Field(min_length=1, max_length=20)


def schema(table: str) -> list[str]:
    """The orders table."""
    return [
        f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, "
        "restaurant_id TEXT NOT NULL, items TEXT NOT NULL, total_cents BIGINT NOT NULL, "
        "status TEXT NOT NULL, detail TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    ]


class Counters(runtime.PolicyLog):
    """Policy events plus how often the menu came from the cache."""

    def __init__(self) -> None:
        super().__init__()
        self.fallbacks = 0

    def __call__(self, event: PolicyEvent) -> None:
        super().__call__(event)
        if isinstance(event, FallbackUsed):
            self.fallbacks += 1


#: gRPC's reconnect backoff grows to 120 s by default; a peer that restarts in seconds must
#: be tried again within one, or the breaker's half-open probes keep failing long after it is
#: back. Discovery, not the channel, decides whether an instance exists.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def remote_channel(target: str) -> grpc.aio.Channel:
    """A plain channel to one instance, reconnecting fast."""
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


#: In a monolith menu and pricing are served in this process: call their servicers directly.
channel = local.channel_factory(remote_channel)


def error(status: int, code: str, detail: str) -> JSONResponse:
    """The JSON error body every answer of this service uses, with the correlation id."""
    return JSONResponse(
        {"error": code, "detail": detail, "correlation_id": correlation_id()}, status_code=status
    )


class OrderService:
    """The order service's parts and handlers (one per process)."""

    def __init__(self, settings: runtime.Settings) -> None:
        self.settings = settings
        self.table = settings.table("orders")
        self.db = runtime.Database(settings.database)
        self.outbox = Outbox(settings.table("outbox"))
        self.broker = Broker.from_url(settings.broker, idempotency=settings.idempotency)
        self.relay = OutboxRelay(
            settings.database,
            self.broker,
            table=self.outbox.table,
            poll_interval=0.02,
            owner=f"{settings.instance_id}-relay",
        )
        self.resolver = Resolver.from_url(settings.registry)
        self.events = Counters()
        menu = ilgrpc.service(
            "menu",
            timeout=SYNC_BUDGET,
            attempt_timeout=0.04,
            retries=1,
            breaker=self.breaker("menu"),
            # The last good menu: yesterday's menu beats an error page.
            fallback=Fallback(
                cache_last_success=True,
                on=ilgrpc.should_fall_back,
                name="menu",
                listeners=[self.events, runtime.policy_metrics()],
            ),
            idempotent=ilgrpc.idempotent_methods(food_pb2.DESCRIPTOR),
            listeners=[self.events, runtime.policy_metrics()],
        )
        no_budget = settings.flag("PRICING_BUDGET", "on") == "off"
        self.pricing_budget = (
            RetryBudget(1000.0, 1_000_000.0, name="pricing")
            if no_budget
            else RetryBudget(0.2, 10.0, name="pricing")
        )
        pricing = ilgrpc.service(
            "pricing",
            timeout=SYNC_BUDGET,
            retries=2,
            budget=self.pricing_budget,
            breaker=self.breaker("pricing", enabled=settings.flag("PRICING_BREAKER") != "off"),
            idempotent=ilgrpc.idempotent_methods(food_pb2.DESCRIPTOR),
            listeners=[self.events, runtime.policy_metrics()],
        )
        self.menu_channel = ilgrpc.resolved_channel(
            "service://menu", self.resolver, menu, channel_factory=channel
        )
        self.pricing_channel = ilgrpc.resolved_channel(
            "service://pricing", self.resolver, pricing, channel_factory=channel
        )
        self.menu = food_pb2_grpc.MenuServiceStub(self.menu_channel)
        self.pricing = food_pb2_grpc.PricingServiceStub(self.pricing_channel)
        self.orchestrator = Orchestrator(
            SagaStore.from_url(settings.saga_store, table=settings.table("sagas")),
            [self.definition()],
            publisher=self.broker,
            owner=f"{settings.instance_id}-sagas",  # stable: a restart resumes its sagas at once
            poll_interval=0.2,
            lease=10.0,
        )
        self.orchestrator.subscribe_replies(
            self.broker, settings.topic(runtime.ORDER_REPLIES), group="order-saga"
        )
        self.broker.subscriber(
            settings.topic(runtime.ORDER_PLACED), group="order-saga-start", concurrency=16
        )(self.start_saga)
        self.requests = {"accepted": 0, "rejected": 0, "failed": 0}

    def breaker(self, name: str, *, enabled: bool = True) -> CircuitBreaker:
        """A breaker per downstream: opens at 50 % failures of >= 10 calls in 5 s, probes
        again after 2 s (instances here restart in about that). Not ``enabled``: one that
        never opens (the retry-storm scenario measures the retry budget alone)."""
        breaker = CircuitBreaker(
            name,
            failure_rate_threshold=0.5 if enabled else 1.0,
            window=5.0,
            minimum_calls=10 if enabled else 1_000_000_000,
            cooldown=2.0,
            record_exceptions=ilgrpc.BREAKER_FAILURES,
            ignore_exceptions=ilgrpc.OWN_REFUSALS,  # no instance to call says nothing of one
            listeners=[self.events],
        )
        # its state on /metrics from the start, for the dashboard's order -> menu edge
        return runtime.policy_metrics().watch(breaker)

    # -- the saga -----------------------------------------------------------------------------

    def definition(self) -> SagaDefinition:
        """The order saga: each remote step a command over the broker, each undo likewise."""
        s = self.settings
        replies = s.topic(runtime.ORDER_REPLIES)
        return SagaDefinition(
            "place_order",
            [
                Step("accept_order", self.accept, self.cancel),
                Step(
                    "authorize_payment",
                    Send(s.topic(runtime.PAYMENT_AUTHORIZE), reply_topic=replies, timeout=30.0),
                    Send(s.topic(runtime.PAYMENT_REFUND), reply_topic=replies, timeout=30.0),
                    retry=SEND_RETRY,
                ),
                Step(
                    "assign_courier",
                    Send(s.topic(runtime.DISPATCH_ASSIGN), reply_topic=replies, timeout=30.0),
                    # a courier assigned after the saga gave up is released, never kept
                    Send(s.topic(runtime.DISPATCH_RELEASE), reply_topic=replies, timeout=30.0),
                    retry=SEND_RETRY,
                ),
                Step("notify", self.complete),
            ],
            timeout=120.0,
        )

    async def start_saga(self, env: Envelope) -> None:
        """``OrderPlaced`` arrived: start the order's saga (once per order id)."""
        order = json.loads(env.payload)
        await self.orchestrator.start("place_order", order, saga_id=order["order_id"])

    async def accept(self, ctx: StepContext) -> None:
        await self.set_status(ctx.data, "PAYMENT_PENDING", "", from_=("PLACED",))

    async def cancel(self, ctx: StepContext) -> None:
        reason = "it could not be completed"
        with contextlib.suppress(Exception):
            state = await self.orchestrator.get(ctx.saga_id)
            errors = [st.error for st in state.steps if st.error]
            if errors:
                reason = errors[-1].split(": ", 1)[-1]
        await self.set_status(
            ctx.data,
            "CANCELLED",
            reason,
            from_=("PLACED", "PAYMENT_PENDING"),
            note=("cancelled", f"Sorry, your order {ctx.saga_id} was cancelled: {reason}."),
        )

    async def complete(self, ctx: StepContext) -> None:
        courier = (ctx.results.get("assign_courier") or {}).get("courier", "a courier")
        await self.set_status(
            ctx.data,
            "DISPATCHED",
            f"courier {courier}",
            from_=("PLACED", "PAYMENT_PENDING"),
            note=("dispatched", f"Your order {ctx.saga_id} is on its way with {courier}."),
        )

    async def set_status(
        self,
        order: dict[str, Any],
        status: str,
        detail: str,
        *,
        from_: tuple[str, ...],
        note: tuple[str, str] | None = None,
    ) -> None:
        """Move the order to ``status``; the notification goes out once, with the change."""
        marks = ", ".join(f"${i + 4}" for i in range(len(from_)))
        async with self.db.transaction() as tx:
            changed = await tx.execute(
                f"UPDATE {self.table} SET status = $1, detail = $2 WHERE id = $3 "
                f"AND status IN ({marks})",
                status,
                detail,
                order["order_id"],
                *from_,
            )
            if changed and note is not None:
                kind, text = note
                message = {
                    "order_id": order["order_id"],
                    "customer_id": order["customer_id"],
                    "kind": kind,
                    "text": text,
                }
                await tx.add_event(
                    self.outbox,
                    self.settings.topic(runtime.NOTIFY),
                    message,
                    key=order["order_id"],
                )

    # -- HTTP ---------------------------------------------------------------------------------

    async def place(self, request: Request) -> JSONResponse:
        """``POST /orders``: validate, price, store with the event, answer 202."""
        try:
            cart = Cart.model_validate_json(await request.body())
        except ValidationError as exc:
            self.requests["rejected"] += 1
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return error(422, "invalid_order", problems)
        customer = request.headers.get(IDENTITY)
        if customer is not None and customer != cart.customer_id:
            self.requests["rejected"] += 1
            return error(403, "forbidden", "a customer places orders for themselves only")
        try:
            with deadline(SYNC_BUDGET):
                menu = await self.menu.GetMenu(
                    food_pb2.MenuRequest(restaurant_id=cart.restaurant_id)
                )
                if menu.restaurant_id != cart.restaurant_id:  # the cache holds another's menu
                    self.requests["failed"] += 1
                    return error(503, "menu_unavailable", "the menu cannot be read right now")
                known = {item.id for item in menu.items}
                unknown = sorted({line.item_id for line in cart.items} - known)
                if unknown:
                    self.requests["rejected"] += 1
                    return error(422, "invalid_order", f"items not on the menu: {unknown}")
                ids = [line.item_id for line in cart.items for _ in range(line.quantity)]
                quote = await self.pricing.Quote(
                    food_pb2.QuoteRequest(restaurant_id=cart.restaurant_id, item_ids=ids)
                )
        except grpc.aio.AioRpcError as exc:
            self.requests["failed"] += 1
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return error(422, "invalid_order", f"unknown restaurant {cart.restaurant_id!r}")
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return error(504, "deadline_exceeded", "menu and pricing took too long")
            return error(503, "unavailable", f"cannot price the order now ({exc.code().name})")
        except DeadlineExceeded:
            self.requests["failed"] += 1
            return error(504, "deadline_exceeded", "menu and pricing took too long")
        except InterlinkError as exc:
            self.requests["failed"] += 1
            return error(503, "unavailable", f"cannot price the order now ({type(exc).__name__})")
        order_id = uuid.uuid4().hex[:20]
        items = json.dumps([line.model_dump() for line in cart.items])
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.table} (id, customer_id, restaurant_id, items, total_cents, "
                "status, detail, created_at) VALUES ($1, $2, $3, $4, $5, 'PLACED', '', $6)",
                order_id,
                cart.customer_id,
                cart.restaurant_id,
                items,
                quote.total_cents,
                time.time(),
            )
            placed = {
                "order_id": order_id,
                "customer_id": cart.customer_id,
                "total_cents": quote.total_cents,
            }
            await tx.add_event(
                self.outbox, self.settings.topic(runtime.ORDER_PLACED), placed, key=order_id
            )
        self.requests["accepted"] += 1
        return JSONResponse(
            {"order_id": order_id, "status": "PLACED", "total_cents": quote.total_cents},
            status_code=202,
            headers={"location": f"/orders/{order_id}"},
        )

    async def show(self, request: Request) -> JSONResponse:
        """``GET /orders/{id}``: the order and where its saga stands."""
        order_id = request.path_params["order_id"]
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT id, customer_id, restaurant_id, items, total_cents, status, detail "
                f"FROM {self.table} WHERE id = $1",
                order_id,
            )
        asking = request.headers.get(IDENTITY)
        if not rows or asking not in (None, rows[0][1]):  # another's order: as if none
            return error(404, "not_found", f"no order {order_id!r}")
        oid, customer, restaurant, items, total, status, detail = rows[0]
        saga: dict[str, Any] | None = None
        with contextlib.suppress(Exception):
            state = await self.orchestrator.get(oid)
            saga = {
                "status": state.status.value,
                "steps": {st.name: st.status.value for st in state.steps},
            }
        return JSONResponse(
            {
                "order_id": oid,
                "customer_id": customer,
                "restaurant_id": restaurant,
                "items": json.loads(items),
                "total_cents": total,
                "status": status,
                "detail": detail,
                "saga": saga,
            }
        )

    async def stats(self) -> dict[str, Any]:
        """What the scenario tables read: orders by status, sagas parked, policy events."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(f"SELECT status, COUNT(*) FROM {self.table} GROUP BY status")
        parked = await self.orchestrator.store.list(
            statuses=[SagaStatus.NEEDS_ATTENTION.value], limit=10_000
        )
        return {
            "orders": {str(s): int(n) for s, n in rows},
            "requests": self.requests,
            "sagas_parked": len(parked),
            # why, for a report or a failing check (the first few distinct reasons)
            "sagas_parked_why": sorted({row.error or "?" for row in parked})[:5],
            "breaker_transitions": self.events.transitions,
            "retries": self.events.retries,
            "menu_fallbacks": self.events.fallbacks,
            "relay_lag": await self.relay.lag(),
        }

    async def warm_up(self, within: float = 5.0, attempts: int = 3) -> None:
        """Call menu and pricing once before serving, so that the first customer's order does
        not spend its 100 ms connecting to them: each once discovery lists it (for at most
        ``within`` seconds), at most ``attempts`` times (fewer failures than the breakers need
        to open, on a machine too busy to connect within the budget)."""
        calls = {
            "menu": lambda: self.menu.GetMenu(food_pb2.MenuRequest(restaurant_id="luigis")),
            "pricing": lambda: self.pricing.Quote(
                food_pb2.QuoteRequest(restaurant_id="luigis", item_ids=["margherita"])
            ),
        }
        deadline_at = time.monotonic() + within
        for name, call in calls.items():
            tries = 0
            while tries < attempts and time.monotonic() < deadline_at:
                if not self.resolver.instances(name):  # not registered yet: nothing to call
                    await asyncio.sleep(0.1)
                    continue
                tries += 1
                try:
                    await call()
                except Exception:  # still connecting: the next try, or the first order
                    await asyncio.sleep(0.1)
                else:
                    break

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> AsyncIterator[None]:
        """Open the database, the resolver, the broker, the relay and the orchestrator."""
        await self.db.open(schema(self.table))
        await self.db.create_outbox(self.outbox)
        async with self.resolver:
            await self.resolver.start(["menu", "pricing"])
            async with self.broker, self.orchestrator:
                relay = asyncio.create_task(self.relay.run(), name="outbox-relay")
                try:
                    await self.warm_up()
                    yield
                finally:
                    relay.cancel()
                    await asyncio.gather(relay, return_exceptions=True)
                    await self.menu_channel.close()
                    await self.pricing_channel.close()
        await self.orchestrator.store.close()  # given as an object: ours to close
        await self.db.close()

    def app(self) -> Any:
        """The ASGI app: routes under ``InterlinkMiddleware`` (correlation id, deadline,
        trace context, JSON errors)."""
        app = runtime.http_app(
            self.stats,
            routes=[
                Route("/orders", self.place, methods=["POST"]),
                Route("/orders/{order_id}", self.show, methods=["GET"]),
            ],
            lifespan=self.lifespan,
        )
        app.add_middleware(InterlinkMiddleware, max_timeout=30.0)
        return app


async def main(stop: asyncio.Event | None = None) -> None:
    """Serve the order API, registered in discovery."""
    settings = runtime.Settings.from_env("order")
    runtime.configure_logging("order")
    service = OrderService(settings)
    await runtime.serve_http(settings, service.app(), stop)


if __name__ == "__main__":
    runtime.run(main)
