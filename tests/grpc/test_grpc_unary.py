"""The call object of the fast path (aio_channel's interceptor and direct_channel): a real
grpc.aio UnaryUnaryCall that books its outcome once and runs the pipeline after a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_helpers import (
    FAST_RECONNECT,
    Delay,
    Fail,
    Faulty,
    food_pb2_grpc,
    menu_request,
    serving,
)

from interlink import Bulkhead, CircuitBreaker, CircuitOpenError, Fallback, Hedge
from interlink.context import use_correlation_id
from interlink.grpc import (
    BREAKER_FAILURES,
    Service,
    aio_channel,
    direct_channel,
    service,
    should_fall_back,
)
from interlink.grpc.client import AioUnaryInterceptor
from interlink.resilience.budget import RetryBudget
from interlink.testing import FakeClock

S = grpc.StatusCode

CHANNELS: dict[str, Callable[[str, Service], Any]] = {
    "aio_channel": lambda target, svc: aio_channel(target, svc, options=FAST_RECONNECT),
    "direct_channel": direct_channel,
}


@pytest.fixture(params=sorted(CHANNELS))
def make_channel(request: pytest.FixtureRequest) -> Callable[[str, Service], Any]:
    return CHANNELS[request.param]


def run(
    servicer: Faulty,
    svc: Service,
    make_channel: Callable[[str, Service], Any],
    body: Callable[[Any], Any],
) -> Any:
    """Serve ``servicer``, then ``await body(stub)`` with a stub on a fresh channel."""

    async def main() -> Any:
        async with serving(servicer) as port:
            channel = make_channel(f"127.0.0.1:{port}", svc)
            try:
                return await body(food_pb2_grpc.MenuServiceStub(channel))
            finally:
                await channel.close()

    return asyncio.run(main())


def test_the_call_is_a_grpc_call_object(make_channel: Any) -> None:
    """The stub returns a grpc.aio UnaryUnaryCall: the answer, then its status and metadata."""

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        answer = await call
        return answer, await call.code(), await call.details(), await call.trailing_metadata()

    answer, code, _, trailing = run(Faulty.of(), service("menu"), make_channel, body)
    assert answer.restaurant_id == "r1"
    assert code is S.OK
    assert trailing is not None


def test_asking_for_the_status_settles_the_call_with_its_retries(make_channel: Any) -> None:
    """code() without awaiting the call: UNAVAILABLE is retried, and the status is the retry's."""
    servicer = Faulty.of(Fail(S.UNAVAILABLE))

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        return await call.code(), await call

    code, answer = run(servicer, service("menu", clock=FakeClock()), make_channel, body)
    assert code is S.OK
    assert answer.restaurant_id == "r1"
    assert len(servicer.hits) == 2


def test_a_done_callback_fires_once_after_the_retries(make_channel: Any) -> None:
    """add_done_callback without awaiting: the retry runs, then the callback, exactly once."""
    servicer = Faulty.of(Fail(S.UNAVAILABLE))

    async def body(stub: Any) -> Any:
        fired: list[Any] = []
        done = asyncio.Event()
        call = stub.GetMenu(menu_request())
        call.add_done_callback(lambda c: (fired.append(c), done.set()))
        await asyncio.wait_for(done.wait(), 5)
        await call
        return fired, call.done(), len(servicer.hits)

    fired, is_done, hits = run(servicer, service("menu", clock=FakeClock()), make_channel, body)
    assert len(fired) == 1
    assert is_done
    assert hits == 2


def test_awaiting_twice_books_one_success(make_channel: Any) -> None:
    """The breaker counts one success for one call, however often the call is awaited."""
    breaker = CircuitBreaker("menu", record_exceptions=BREAKER_FAILURES)
    svc = service("menu", breaker=breaker)

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        await call
        await call
        await call.code()
        return breaker.metrics.successes_total

    assert run(Faulty.of(), svc, make_channel, body) == 1


@pytest.mark.parametrize("own_clock", [False, True])
def test_the_budget_deposit_is_dated_at_the_first_attempt(
    make_channel: Any, own_clock: bool
) -> None:
    """An answered call's deposit in the retry budget is dated when its first attempt started
    (on the service's clock); a budget on a clock of its own reads it when the answer comes."""
    clock = FakeClock()
    budget_clock = FakeClock() if own_clock else clock
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10.0, clock=budget_clock)
    svc = service("menu", budget=budget, clock=clock)

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        await asyncio.sleep(0.05)  # the attempt is on its way
        budget_clock.advance(9.5)
        await call
        budget_clock.advance(0.6)  # 10.1 s after the start: a deposit dated then has expired
        return budget.snapshot().deposits

    assert run(Faulty.of(Delay(0.2)), svc, make_channel, body) == (1 if own_clock else 0)


def test_in_a_request_the_id_joins_the_callers_own_metadata(make_channel: Any) -> None:
    """In a request, x-request-id rides alone on a call without metadata, beside the caller's
    own pairs on one with, and the caller's explicit x-request-id wins; each request its own."""
    servicer = Faulty.of()

    async def body(stub: Any) -> Any:
        with use_correlation_id("req-7"):
            await stub.GetMenu(menu_request())
            await stub.GetMenu(menu_request(), metadata=(("x-tenant", "t1"),))
            await stub.GetMenu(menu_request(), metadata=(("x-request-id", "mine"),))
            await stub.GetMenu(menu_request())
        with use_correlation_id("req-8"):  # another request: its own id
            await stub.GetMenu(menu_request())
        await stub.GetMenu(menu_request())  # outside any request: none

    run(servicer, service("menu"), make_channel, body)
    sent = [{k: v for k, v in h.metadata.items() if k.startswith("x-")} for h in servicer.hits]
    assert sent == [
        {"x-request-id": "req-7"},
        {"x-request-id": "req-7", "x-tenant": "t1"},
        {"x-request-id": "mine"},
        {"x-request-id": "req-7"},
        {"x-request-id": "req-8"},
        {},
    ]


def test_a_caller_error_keeps_its_status_on_the_call(make_channel: Any) -> None:
    """NOT_FOUND: one attempt, grpc's error raised, and the call's code() says NOT_FOUND."""
    servicer = Faulty.of(Fail(S.NOT_FOUND))

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        return caught.value.code(), await call.code()

    assert run(servicer, service("menu"), make_channel, body) == (S.NOT_FOUND, S.NOT_FOUND)
    assert len(servicer.hits) == 1


def test_a_fallback_answer_has_an_ok_status_and_no_metadata(make_channel: Any) -> None:
    """After the last attempt failed, the fallback answers: code() OK, no trailing metadata."""
    fallback = Fallback("cached", on=should_fall_back)
    svc = service("menu", retries=0, fallback=fallback)

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        return await call, await call.code(), await call.trailing_metadata()

    servicer = Faulty.of(default=Fail(S.UNAVAILABLE))
    assert run(servicer, svc, make_channel, body) == ("cached", S.OK, None)


def test_the_cached_answer_is_the_message_whichever_path_cached_it(make_channel: Any) -> None:
    """A last good answer remembered by a call through the pipeline (breaker not CLOSED) is
    answered as the message by a later call whose fast path failed, not as the old call."""
    breaker = CircuitBreaker("menu", record_exceptions=BREAKER_FAILURES)
    fallback = Fallback(cache_last_success=True, on=should_fall_back)
    svc = service("menu", retries=0, breaker=breaker, fallback=fallback)

    async def body(stub: Any) -> Any:
        breaker.disable()  # not CLOSED: this call runs through the pipeline
        first = await stub.GetMenu(menu_request())
        breaker.reset()  # CLOSED: the fast path, which fails and falls back
        return first, await stub.GetMenu(menu_request())

    servicer = Faulty.of(None, default=Fail(S.UNAVAILABLE))
    first, cached = run(servicer, svc, make_channel, body)
    assert type(cached) is type(first)
    assert cached.restaurant_id == "r1"
    assert len(servicer.hits) == 2


def test_cancelling_the_call_cancels_the_attempt(make_channel: Any) -> None:
    """cancel() ends the attempt in flight: awaiting raises CancelledError, code() CANCELLED."""

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return await call.code()

    assert run(Faulty.of(Delay(5.0)), service("menu"), make_channel, body) is S.CANCELLED


def test_an_open_breaker_takes_the_pipeline_path(make_channel: Any) -> None:
    """Breaker not CLOSED: the pipeline refuses (CircuitOpenError), nothing is sent."""
    breaker = CircuitBreaker("menu", record_exceptions=BREAKER_FAILURES)
    breaker.force_open()
    servicer = Faulty.of()

    async def body(stub: Any) -> Any:
        with pytest.raises(CircuitOpenError):
            await stub.GetMenu(menu_request())

    run(servicer, service("menu", breaker=breaker), make_channel, body)
    assert servicer.hits == []


def test_direct_channel_streams_carry_the_context() -> None:
    """A server stream over direct_channel gets x-request-id and the deadline."""
    servicer = Faulty.of()

    async def body(stub: Any) -> Any:
        with use_correlation_id("stream-1"):
            return [item.id async for item in stub.ListItems(menu_request(), timeout=5.0)]

    assert run(servicer, service("menu"), CHANNELS["direct_channel"], body) == ["0", "1", "2"]
    (hit,) = servicer.hits
    assert hit.metadata["x-request-id"] == "stream-1"
    assert hit.time_remaining is not None
    assert 0 < hit.time_remaining <= 5.1  # gRPC rounds the timeout it sends up


@pytest.mark.parametrize(
    ("extra", "fast"),
    [
        ({}, True),
        ({"fallback": Fallback("cached", on=should_fall_back)}, True),
        ({"bulkhead": Bulkhead(4)}, False),
        ({"hedge": Hedge(1.0)}, False),
        ({"breaker": CircuitBreaker("m", slow_call_duration=1.0)}, False),
    ],
)
def test_the_fast_path_is_taken_only_for_retry_breaker_and_fallback(
    extra: dict[str, Any], fast: bool
) -> None:
    """A policy that acts while the call runs sends every call through the pipeline."""
    interceptor = AioUnaryInterceptor(service("menu", **extra))

    async def continuation(*_: Any) -> None:
        return None

    job = interceptor._fast_job(
        continuation, "/food.v1.MenuService/GetMenu", None, None, None, None, menu_request()
    )
    assert (job is not None) is fast


def test_a_retried_call_through_a_bulkhead_still_answers(make_channel: Any) -> None:
    """The pipeline path (a bulkhead): UNAVAILABLE is retried, the answer is the retry's."""
    servicer = Faulty.of(Fail(S.UNAVAILABLE))
    svc = service("menu", clock=FakeClock(), bulkhead=Bulkhead(4))

    async def body(stub: Any) -> Any:
        call = stub.GetMenu(menu_request())
        return await call, await call.code()

    answer, code = run(servicer, svc, make_channel, body)
    assert answer.restaurant_id == "r1"
    assert code is S.OK
    assert len(servicer.hits) == 2


def test_direct_channel_passes_the_rest_to_its_grpc_channel() -> None:
    """channel_ready() and get_state() are the underlying grpc.aio channel's."""

    async def main() -> Any:
        async with serving(Faulty.of()) as port:
            ch = direct_channel(f"127.0.0.1:{port}", service("menu"))
            async with ch:
                await asyncio.wait_for(ch.channel_ready(), 5)
                return ch.get_state(), isinstance(ch.channel, grpc.aio.Channel)

    assert asyncio.run(main()) == (grpc.ChannelConnectivity.READY, True)
