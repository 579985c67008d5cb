"""A -> B -> C over real grpc.aio servers: what rides along every hop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_helpers import Faulty, food_pb2, food_pb2_grpc, menu_request, serving, trailing_id
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from interlink import remaining
from interlink.context import correlation_id
from interlink.grpc import AioServerInterceptor, aio_channel, service

HOP_WORK = 0.02  # each hop works this long before calling the next


class Hop(food_pb2_grpc.MenuServiceServicer):
    """Records what it saw, works a little, then calls the next hop (if any)."""

    def __init__(self, downstream: Any = None) -> None:
        self.downstream = downstream
        self.seen: list[dict[str, Any]] = []

    async def GetMenu(self, request: Any, context: Any) -> Any:
        self.seen.append(
            {
                "deadline_left": remaining(),
                "grpc_left": context.time_remaining(),
                "cid": correlation_id(),
                "trace_id": trace.get_current_span().get_span_context().trace_id,
            }
        )
        await asyncio.sleep(HOP_WORK)
        if self.downstream is not None:
            return await self.downstream.GetMenu(request)
        return food_pb2.Menu(restaurant_id=request.restaurant_id)


class SlowQueue(grpc.aio.ServerInterceptor):
    """Stands for a busy server: the request waits (the loop blocked) just before interlink's
    wrapper of the handler runs, so the wrapper is what finds the deadline gone."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        wrapped = handler.unary_unary

        async def queued(request: Any, context: Any) -> Any:
            time.sleep(self.seconds)  # noqa: ASYNC251 - a busy process, on purpose
            return await wrapped(request, context)

        return grpc.unary_unary_rpc_method_handler(
            queued,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def chain(provider: Any, *, b_queue: float = 0.0) -> tuple[Hop, Hop, Faulty | Hop, Any]:
    """Run one request through A -> B -> C; returns the hops and the client's call."""
    c = Hop()
    interceptors = [AioServerInterceptor(tracer_provider=provider)]
    async with serving(c, interceptors=interceptors) as c_port:
        c_channel = aio_channel(f"127.0.0.1:{c_port}", service("c"), tracer_provider=provider)
        b = Hop(food_pb2_grpc.MenuServiceStub(c_channel))
        b_interceptors = ([SlowQueue(b_queue)] if b_queue else []) + interceptors
        async with serving(b, interceptors=b_interceptors) as b_port:
            b_channel = aio_channel(f"127.0.0.1:{b_port}", service("b"), tracer_provider=provider)
            a = Hop(food_pb2_grpc.MenuServiceStub(b_channel))
            async with serving(a, interceptors=interceptors) as a_port:
                client = grpc.aio.insecure_channel(f"127.0.0.1:{a_port}")
                call = food_pb2_grpc.MenuServiceStub(client).GetMenu(
                    menu_request(), timeout=0.1 if b_queue else 1.0
                )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call
                code = await call.code()
                trailing = await call.trailing_metadata()
                await client.close()
            await b_channel.close()
        await c_channel.close()
    return a, b, c, (code, trailing)


def test_deadline_shrinks_at_every_hop(spans: Any) -> None:
    """A's budget minus A's work is what B gets, and B's remainder is what C gets."""
    a, b, c, (code, _) = asyncio.run(chain(spans[0]))
    assert code is grpc.StatusCode.OK
    left = [hop.seen[0]["deadline_left"] for hop in (a, b, c)]
    assert 0.7 < left[0] <= 1.01
    assert left[0] - left[1] >= HOP_WORK * 0.8
    assert left[1] - left[2] >= HOP_WORK * 0.8
    # interlink's deadline is the gRPC deadline, not a second clock
    for hop in (a, b, c):
        assert hop.seen[0]["deadline_left"] == pytest.approx(hop.seen[0]["grpc_left"], abs=0.005)


def test_correlation_and_trace_ids_are_the_same_at_c_as_at_a(spans: Any) -> None:
    """The id A assigned and the trace A started reach C; A echoes the id to the client."""
    provider, exporter = spans
    a, b, c, (_, trailing) = asyncio.run(chain(provider))
    cids = {hop.seen[0]["cid"] for hop in (a, b, c)}
    trace_ids = {hop.seen[0]["trace_id"] for hop in (a, b, c)}
    assert len(cids) == 1
    assert trailing_id(trailing) in cids
    assert len(trace_ids) == 1
    assert 0 not in trace_ids
    finished = exporter.get_finished_spans()
    kinds = sorted(s.kind.name for s in finished)
    assert kinds == ["CLIENT", "CLIENT", "SERVER", "SERVER", "SERVER"]
    assert {s.context.trace_id for s in finished} == trace_ids
    servers = {s.parent.span_id for s in finished if s.kind is trace.SpanKind.SERVER if s.parent}
    clients = {s.context.span_id for s in finished if s.kind is trace.SpanKind.CLIENT}
    assert servers == clients  # B's and C's server spans are children of the client spans


def test_expired_request_is_refused_at_b_without_calling_c(spans: Any) -> None:
    """B finds the deadline gone when its handler would start: DEADLINE_EXCEEDED, C untouched."""
    a, b, c, (code, _) = asyncio.run(chain(spans[0], b_queue=0.15))
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(a.seen) == 1
    assert b.seen == []
    assert c.seen == []
