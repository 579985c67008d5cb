"""Fault injection against a real grpc.aio server: retries, budget, breaker, fallback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_helpers import (
    FAST_RECONNECT,
    GET_MENU,
    PLACE_ORDER,
    Delay,
    Fail,
    Faulty,
    food_pb2,
    food_pb2_grpc,
    menu_request,
    serving,
)
from support import free_port

from interlink import CircuitBreaker, CircuitOpenError, Fallback, RetryBudget
from interlink.grpc import BREAKER_FAILURES, aio_channel, service, should_fall_back
from interlink.grpc.status import NEVER_RETRIED_CODES, PUSHBACK_KEY
from interlink.resilience.breaker import State
from interlink.testing import FakeClock

S = grpc.StatusCode


def menu_stub(port: int, svc: Any) -> tuple[Any, Any]:
    channel = aio_channel(f"127.0.0.1:{port}", svc, options=FAST_RECONNECT)
    return channel, food_pb2_grpc.MenuServiceStub(channel)


async def call_menu(servicer: Faulty, svc: Any, calls: int = 1) -> list[Any]:
    """Make ``calls`` GetMenu calls; returns each response or the exception it raised."""
    outcomes: list[Any] = []
    async with serving(servicer) as port:
        channel, stub = menu_stub(port, svc)
        for _ in range(calls):
            try:
                outcomes.append(await stub.GetMenu(menu_request()))
            except Exception as exc:
                outcomes.append(exc)
        await channel.close()
    return outcomes


def codes(outcomes: list[Any]) -> list[Any]:
    return [o.code() if isinstance(o, grpc.aio.AioRpcError) else type(o).__name__ for o in outcomes]


def test_unavailable_is_retried_with_backoff_until_it_succeeds() -> None:
    """Two UNAVAILABLE then OK: three attempts, two backoff sleeps within the schedule."""
    clock = FakeClock()
    servicer = Faulty.of(Fail(S.UNAVAILABLE), Fail(S.UNAVAILABLE))
    (answer,) = asyncio.run(call_menu(servicer, service("menu", clock=clock)))
    assert answer.restaurant_id == "r1"
    assert len(servicer.hits) == 3
    assert len(clock.sleeps) == 2
    assert 0 <= clock.sleeps[0] <= 0.05
    assert 0 <= clock.sleeps[1] <= 0.1


def test_every_attempt_carries_the_same_correlation_id() -> None:
    """Retries are the same request: one x-request-id across attempts."""
    servicer = Faulty.of(Fail(S.UNAVAILABLE))

    async def main() -> None:
        from interlink.context import use_correlation_id

        with use_correlation_id("req-42"):
            await call_menu(servicer, service("menu", clock=FakeClock()))

    asyncio.run(main())
    assert [h.metadata["x-request-id"] for h in servicer.hits] == ["req-42", "req-42"]


def test_resource_exhausted_waits_exactly_the_server_pushback() -> None:
    """grpc-retry-pushback-ms: 250 replaces the backoff: the retry sleeps 0.25 s."""
    clock = FakeClock()
    servicer = Faulty.of(Fail(S.RESOURCE_EXHAUSTED, ((PUSHBACK_KEY, "250"),)))
    (answer,) = asyncio.run(call_menu(servicer, service("menu", clock=clock)))
    assert answer.restaurant_id == "r1"
    assert clock.sleeps == [0.25]


def test_malformed_pushback_stops_retrying() -> None:
    """A negative pushback means "do not retry": one attempt, the status reaches the caller."""
    servicer = Faulty.of(Fail(S.RESOURCE_EXHAUSTED, ((PUSHBACK_KEY, "-1"),)))
    (error,) = asyncio.run(call_menu(servicer, service("menu", clock=FakeClock())))
    assert codes([error]) == [S.RESOURCE_EXHAUSTED]
    assert len(servicer.hits) == 1


def test_pushback_beyond_the_deadline_is_not_waited_for() -> None:
    """A pushback longer than the time left gives up at once instead of sleeping past it."""
    clock = FakeClock()
    servicer = Faulty.of(Fail(S.UNAVAILABLE, ((PUSHBACK_KEY, "5000"),)))
    (error,) = asyncio.run(call_menu(servicer, service("menu", timeout=1.0, clock=clock)))
    assert codes([error]) == [S.UNAVAILABLE]
    assert clock.sleeps == []
    assert len(servicer.hits) == 1


@pytest.mark.parametrize("code", sorted(NEVER_RETRIED_CODES | {S.INTERNAL, S.UNKNOWN}, key=str))
def test_non_retryable_codes_are_tried_once(code: grpc.StatusCode) -> None:
    """INVALID_ARGUMENT, NOT_FOUND, ... reach the caller after one attempt, code intact."""
    servicer = Faulty.of(Fail(code))
    svc = service("menu", clock=FakeClock(), idempotent=["*"])
    (error,) = asyncio.run(call_menu(servicer, svc))
    assert codes([error]) == [code]
    assert error.details() == "injected"
    assert len(servicer.hits) == 1


def test_caller_errors_count_as_successes_for_the_breaker() -> None:
    """A run of NOT_FOUND never opens the breaker; a run of INTERNAL does."""
    clock = FakeClock()

    def svc(name: str) -> Any:
        breaker = CircuitBreaker(
            name, record_exceptions=BREAKER_FAILURES, minimum_calls=4, clock=clock
        )
        return service(name, breaker=breaker, clock=clock), breaker

    not_found, b1 = svc("nf")
    internal, b2 = svc("int")
    asyncio.run(call_menu(Faulty.of(default=Fail(S.NOT_FOUND)), not_found, calls=6))
    asyncio.run(call_menu(Faulty.of(default=Fail(S.INTERNAL)), internal, calls=6))
    assert b1.state is State.CLOSED
    assert b1.metrics.failures_total == 0
    assert b2.state is State.OPEN


def test_aborted_is_retried_only_for_the_idempotent_method() -> None:
    """ABORTED: GetMenu (NO_SIDE_EFFECTS) is tried again, PlaceOrder is not."""
    servicer = Faulty.of(Fail(S.ABORTED), None, Fail(S.ABORTED))
    svc = service("shop", clock=FakeClock(), idempotent=[GET_MENU])

    async def main() -> Any:
        async with serving(servicer) as port:
            channel = aio_channel(f"127.0.0.1:{port}", svc)
            menu = await food_pb2_grpc.MenuServiceStub(channel).GetMenu(menu_request())
            with pytest.raises(grpc.aio.AioRpcError) as order:
                await food_pb2_grpc.PricingServiceStub(channel).PlaceOrder(food_pb2.OrderRequest())
            await channel.close()
            return menu, order.value

    menu, order_error = asyncio.run(main())
    assert menu.restaurant_id == "r1"
    assert order_error.code() is S.ABORTED
    assert [h.method for h in servicer.hits] == [GET_MENU, GET_MENU, PLACE_ORDER]


def test_slow_attempt_times_out_and_is_retried_when_idempotent() -> None:
    """A per-attempt timeout cuts a slow answer and the idempotent call is tried again."""
    servicer = Faulty.of(Delay(0.5))
    svc = service("menu", attempt_timeout=0.05, clock=FakeClock(), idempotent=[GET_MENU])
    (answer,) = asyncio.run(call_menu(servicer, svc))
    assert answer.restaurant_id == "r1"
    assert len(servicer.hits) == 2
    assert servicer.hits[0].time_remaining is not None
    assert servicer.hits[0].time_remaining < 0.06


def test_slow_call_out_of_deadline_is_not_retried() -> None:
    """When the call's own deadline ran out there is nothing left to retry with; the caller
    gets gRPC's DEADLINE_EXCEEDED (one clock, no race with a second timer)."""
    servicer = Faulty.of(Delay(0.5))
    (error,) = asyncio.run(call_menu(servicer, service("menu", timeout=0.05, idempotent=["*"])))
    assert codes([error]) == [S.DEADLINE_EXCEEDED]
    assert len(servicer.hits) == 1


def test_retries_stay_within_the_budget_under_total_failure() -> None:
    """100 % UNAVAILABLE: downstream sees <= (1 + ratio) x calls + the budget's floor."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.2, ttl=10.0, clock=clock)
    never_opens = CircuitBreaker("menu", minimum_calls=10_000, clock=clock)
    svc = service("menu", retries=3, budget=budget, breaker=never_opens, clock=clock)
    servicer = Faulty.of(default=Fail(S.UNAVAILABLE))
    calls = 60
    outcomes = asyncio.run(call_menu(servicer, svc, calls=calls))
    assert set(codes(outcomes)) == {S.UNAVAILABLE}
    assert calls < len(servicer.hits) <= calls * 1.1 + 0.2 * 10
    assert isinstance(outcomes[-1].__cause__, Exception)  # the budget's refusal, kept as cause


def test_server_down_opens_the_breaker_then_fallback_then_half_open_recovery() -> None:
    """Connection refused -> OPEN -> fallback answers without calls -> server back ->
    after the cooldown one trial call closes the breaker."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "menu", record_exceptions=BREAKER_FAILURES, minimum_calls=3, cooldown=5.0, clock=clock
    )
    cached = food_pb2.Menu(restaurant_id="cached")
    fallback = Fallback(cached, on=should_fall_back)
    svc = service("menu", retries=0, breaker=breaker, fallback=fallback, clock=clock)
    port = free_port()
    servicer = Faulty.of()

    async def main() -> list[Any]:
        channel, stub = menu_stub(port, svc)
        answers = [await stub.GetMenu(menu_request()) for _ in range(4)]
        states = [breaker.state]
        async with serving(servicer, port=port):
            answers.append(await stub.GetMenu(menu_request()))  # still OPEN: fallback
            clock.advance(5.0)
            states.append(breaker.state)
            await asyncio.wait_for(channel.channel_ready(), 2.0)
            answers.append(await stub.GetMenu(menu_request()))  # the trial
            states.append(breaker.state)
        await channel.close()
        return [answers, states]

    answers, states = asyncio.run(main())
    assert [a.restaurant_id for a in answers] == ["cached"] * 5 + ["r1"]
    assert states == [State.OPEN, State.HALF_OPEN, State.CLOSED]
    assert len(servicer.hits) == 1  # only the trial reached the server


def test_open_breaker_rejects_without_calling() -> None:
    """Without a fallback the caller gets CircuitOpenError and the server no request."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "menu", record_exceptions=BREAKER_FAILURES, minimum_calls=2, clock=clock
    )
    servicer = Faulty.of(default=Fail(S.UNAVAILABLE))
    svc = service("menu", retries=0, breaker=breaker, clock=clock)
    outcomes = asyncio.run(call_menu(servicer, svc, calls=5))
    assert codes(outcomes) == [S.UNAVAILABLE] * 2 + ["CircuitOpenError"] * 3
    assert isinstance(outcomes[-1], CircuitOpenError)
    assert len(servicer.hits) == 2


def test_fallback_is_not_used_for_a_caller_error() -> None:
    """NOT_FOUND is the caller's answer: should_fall_back lets it through."""
    fallback = Fallback(food_pb2.Menu(restaurant_id="cached"), on=should_fall_back)
    svc = service("menu", fallback=fallback, clock=FakeClock())
    (error,) = asyncio.run(call_menu(Faulty.of(Fail(S.NOT_FOUND)), svc))
    assert codes([error]) == [S.NOT_FOUND]


def test_streaming_call_passes_through_with_context_and_no_retry() -> None:
    """ListItems gets the metadata and deadline but is not retried on UNAVAILABLE."""
    servicer = Faulty.of(None, Fail(S.UNAVAILABLE))

    async def main() -> tuple[list[str], Any]:
        from interlink.context import use_correlation_id

        async with serving(servicer) as port:
            channel = aio_channel(f"127.0.0.1:{port}", service("menu", clock=FakeClock()))
            stub = food_pb2_grpc.MenuServiceStub(channel)
            with use_correlation_id("stream-1"):
                items = [i.id async for i in stub.ListItems(menu_request(), timeout=2.0)]
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    _ = [i async for i in stub.ListItems(menu_request())]
            await channel.close()
        return items, failed.value

    items, error = asyncio.run(main())
    assert items == ["0", "1", "2"]
    assert error.code() is S.UNAVAILABLE
    assert len(servicer.hits) == 2
    assert servicer.hits[0].metadata["x-request-id"] == "stream-1"
    assert servicer.hits[0].time_remaining is not None
    assert servicer.hits[0].time_remaining <= 2.01
