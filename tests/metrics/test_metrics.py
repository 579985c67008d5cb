"""Prometheus metrics from policy events, breakers' counters, and HTTP/gRPC request latency."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from interlink import BudgetExhausted, CircuitBreaker, CircuitOpenError, Retry, RetryBudget
from interlink.metrics import PolicyMetrics, grpc_interceptor, instrument, serve
from interlink.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from examples.proto import food_pb2, food_pb2_grpc  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "http"))
from http_support import serve as serve_asgi  # noqa: E402


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float:
    got = registry.get_sample_value(metric, labels)
    return 0.0 if got is None else got


def fail() -> None:
    raise OSError("down")


def test_a_tripping_breaker_is_counted_and_its_state_exported() -> None:
    """Closed -> open is a transition, the state gauge follows, rejections are counted, and
    the watched breaker's own counters are read at scrape time."""
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    clock = FakeClock()
    breaker = metrics.watch(CircuitBreaker("menu", minimum_calls=2, cooldown=10, clock=clock))
    assert value(registry, "interlink_breaker_state", breaker="menu", state="closed") == 1
    for _ in range(2):
        with pytest.raises(OSError):
            breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        breaker.call(fail)
    assert value(registry, "interlink_breaker_state", breaker="menu", state="open") == 1
    assert value(registry, "interlink_breaker_state", breaker="menu", state="closed") == 0
    assert (
        value(
            registry,
            "interlink_breaker_transitions_total",
            breaker="menu",
            **{"from": "closed", "to": "open"},
        )
        == 1
    )
    assert (
        value(
            registry,
            "interlink_rejections_total",
            policy="breaker",
            name="menu",
            reason="circuit_open",
        )
        == 1
    )
    assert value(registry, "interlink_breaker_calls_total", breaker="menu", outcome="failure") == 2
    assert value(registry, "interlink_breaker_rejected_total", breaker="menu") == 1
    assert value(registry, "interlink_breaker_failure_rate", breaker="menu") == 1.0
    assert 0 < value(registry, "interlink_breaker_half_open_in_seconds", breaker="menu") <= 10


def test_retries_and_budget_refusals_are_counted() -> None:
    """Scheduled retries per policy; a budget refusal is a give-up and a rejection."""
    registry = CollectorRegistry()
    metrics = PolicyMetrics(registry)
    budget = RetryBudget(ratio=0.0, min_per_second=0.0)
    flaky = Retry(2, sleep=lambda _: None, listeners=[metrics], name="pricing")
    starved = Retry(2, sleep=lambda _: None, budget=budget, listeners=[metrics], name="menu")
    with pytest.raises(OSError):
        flaky.call(fail)
    with pytest.raises(BudgetExhausted):
        starved.call(fail)
    assert value(registry, "interlink_retries_total", name="pricing") == 2
    assert value(registry, "interlink_retry_give_ups_total", name="menu", reason="budget") == 1
    assert (
        value(
            registry,
            "interlink_rejections_total",
            policy="retry_budget",
            name="menu",
            reason="budget_exhausted",
        )
        == 1
    )


def test_instrument_serves_metrics_and_times_requests_by_route() -> None:
    """One call: /metrics answers, and latency is recorded under the route's template."""

    async def order(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["id"]})

    async def broken(request: Request) -> JSONResponse:
        return JSONResponse({}, status_code=503)

    registry = CollectorRegistry()
    wired = instrument(
        Starlette(routes=[Route("/orders/{id}", order), Route("/broken", broken)]),
        registry=registry,
    )
    assert wired.listeners[0] is wired.policies
    with serve_asgi(wired) as url, httpx.Client(base_url=url) as http:
        for i in range(3):
            assert http.get(f"/orders/{i}").status_code == 200
        assert http.get("/broken").status_code == 503
        assert http.get("/nowhere").status_code == 404
        text = http.get("/metrics").text
    assert 'http_route="/orders/{id}"' in text
    labels = {"http_request_method": "GET", "http_route": "/orders/{id}"}
    count = "http_server_request_duration_seconds_count"
    assert value(registry, count, **labels, http_response_status_code="200") == 3
    assert (
        value(
            registry,
            count,
            http_request_method="GET",
            http_route="/broken",
            http_response_status_code="503",
        )
        == 1
    )
    assert (
        value(
            registry,
            count,
            http_request_method="GET",
            http_route="unmatched",
            http_response_status_code="404",
        )
        == 1
    )


class Menu(food_pb2_grpc.MenuServiceServicer):  # type: ignore[misc]
    async def GetMenu(self, request: food_pb2.MenuRequest, context: grpc.aio.ServicerContext):
        if request.restaurant_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such restaurant")
        return food_pb2.Menu(restaurant_id=request.restaurant_id)


async def _call_menu(ids: list[str]) -> CollectorRegistry:
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[grpc_interceptor(registry)])
    food_pb2_grpc.add_MenuServiceServicer_to_server(Menu(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = food_pb2_grpc.MenuServiceStub(channel)
            for restaurant in ids:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetMenu(food_pb2.MenuRequest(restaurant_id=restaurant))
    finally:
        await server.stop(None)
    return registry


def test_grpc_calls_are_timed_by_method_and_status() -> None:
    """OK and NOT_FOUND answers each land under their status code."""
    registry = asyncio.run(_call_menu(["r1", "missing", "r2"]))
    method = "/food.v1.MenuService/GetMenu"
    name = "rpc_server_duration_seconds_count"
    assert value(registry, name, rpc_method=method, rpc_grpc_status_code="OK") == 2
    assert value(registry, name, rpc_method=method, rpc_grpc_status_code="NOT_FOUND") == 1


def test_standalone_exporter() -> None:
    """A process with no HTTP server still exposes /metrics on its own port."""
    registry = CollectorRegistry()
    PolicyMetrics(registry).set_state("payments", "open")
    server = serve(0, registry=registry)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.close()
    assert 'interlink_breaker_state{breaker="payments",state="open"} 1.0' in text


def test_system_metrics_read_dead_letters_outbox_and_sagas(tmp_path: Path) -> None:
    """A dead letter, two unpublished outbox rows and a parked saga show in the gauges."""
    import sqlite3

    from interlink.messaging import Broker
    from interlink.metrics import SystemMetrics
    from interlink.outbox import Outbox, OutboxRelay
    from interlink.saga import Orchestrator, SagaDefinition, SagaStore, Step

    db = tmp_path / "orders.db"
    outbox = Outbox()
    conn = sqlite3.connect(db)
    outbox.create_tables(conn)
    with conn:
        outbox.add(conn, "orders.placed", b"1", key="a")
        outbox.add(conn, "orders.placed", b"2", key="b")
    conn.close()

    def refuse(ctx: object) -> None:
        raise RuntimeError("nothing to undo here")

    def charge(ctx: object) -> None:
        raise RuntimeError("declined")

    async def scenario() -> CollectorRegistry:
        broker = Broker.from_url(f"sqlite:///{tmp_path}/events.db?poll=0.02")

        @broker.subscriber("payments", group="p", retry=Retry(0), max_deliveries=1)
        async def fail(payload: bytes) -> None:
            raise ValueError("poison")

        store = SagaStore.from_url(f"sqlite:///{tmp_path}/sagas.db")
        definition = SagaDefinition(
            "order",
            [
                Step("reserve", lambda ctx: None, refuse, compensation_retry=Retry(0)),
                Step("charge", charge, retry=Retry(0)),
            ],
        )
        registry = CollectorRegistry()
        async with broker, OutboxRelay(f"sqlite:///{db}", broker) as relay:
            orchestrator = Orchestrator(store, [definition], poll_interval=0.05)
            async with orchestrator:
                await orchestrator.start("order", {}, saga_id="s-1")
                await orchestrator.wait("s-1", max_wait=20)
            await broker.publish("payments", b"x")
            system = SystemMetrics(
                registry, brokers=[broker], relays={"orders": relay}, saga_stores=[store]
            )
            for _ in range(200):
                await system.refresh()
                if value(registry, "interlink_dlq_messages", topic="payments") == 1:
                    break
                await asyncio.sleep(0.05)
        return registry

    registry = asyncio.run(scenario())
    assert value(registry, "interlink_dlq_messages", topic="payments") == 1
    assert value(registry, "interlink_outbox_pending", outbox="orders") == 2
    assert value(registry, "interlink_outbox_lag_seconds", outbox="orders") >= 0
    assert value(registry, "interlink_sagas", status="NEEDS_ATTENTION") == 1
    assert value(registry, "interlink_sagas", status="COMPLETED") == 0


def test_span_metrics_time_client_calls_and_messages() -> None:
    """HTTP client attempts and publish/handle of messages, from the spans they open."""
    from opentelemetry.sdk.trace import TracerProvider

    from interlink.http import AsyncClient
    from interlink.messaging import Broker
    from interlink.metrics import span_metrics

    registry = CollectorRegistry()
    provider = TracerProvider()
    provider.add_span_processor(span_metrics(registry))

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def scenario(url: str) -> None:
        async with AsyncClient(tracer_provider=provider) as client:
            for _ in range(3):
                await client.get(f"{url}/hello")
        broker = Broker.from_url("memory://span-metrics", tracer_provider=provider)
        handled = asyncio.Event()

        @broker.subscriber("orders", group="billing")
        async def handle(payload: bytes) -> None:
            handled.set()

        async with broker:
            await broker.publish("orders", b"1")
            await asyncio.wait_for(handled.wait(), 10)

    with serve_asgi(Starlette(routes=[Route("/hello", hello)])) as url:
        asyncio.run(scenario(url))
    provider.shutdown()
    address = url.removeprefix("http://")
    http_count = value(
        registry,
        "http_client_request_duration_seconds_count",
        http_request_method="GET",
        server_address=address,
        http_response_status_code="200",
    )
    assert http_count == 3
    assert (
        value(
            registry,
            "messaging_client_operation_duration_seconds_count",
            messaging_destination_name="orders",
            messaging_operation_type="send",
        )
        == 1
    )
    assert (
        value(
            registry,
            "messaging_process_duration_seconds_count",
            messaging_destination_name="orders",
            messaging_consumer_group_name="billing",
            outcome="ok",
        )
        == 1
    )
