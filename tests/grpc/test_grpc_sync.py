"""Sync grpc channels and servers get the same policies and propagation."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from grpc_helpers import food_pb2, food_pb2_grpc, menu_request, trailing_id
from support import free_port

from interlink import CircuitBreaker, Fallback, remaining
from interlink.context import correlation_id, use_correlation_id
from interlink.grpc import BREAKER_FAILURES, ServerInterceptor, channel, service, should_fall_back
from interlink.grpc.status import PUSHBACK_KEY
from interlink.testing import FakeClock

S = grpc.StatusCode


class SyncMenu(food_pb2_grpc.MenuServiceServicer):
    """A thread-pool servicer answering each call with the next scripted status (None: OK)."""

    def __init__(self, *script: grpc.StatusCode | None) -> None:
        self.script = deque(script)
        self.seen: list[tuple[str | None, float | None, dict[str, str]]] = []

    def GetMenu(self, request: Any, context: Any) -> Any:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append((correlation_id(), remaining(), md))
        code = self.script.popleft() if self.script else None
        if request.restaurant_id == "boom":
            raise RuntimeError("secret")
        if code is not None:
            context.set_trailing_metadata(((PUSHBACK_KEY, "100"),))
            context.abort(code, "injected")
        return food_pb2.Menu(restaurant_id=request.restaurant_id)

    def ListItems(self, request: Any, context: Any) -> Iterator[Any]:
        self.seen.append((correlation_id(), remaining(), {}))
        yield food_pb2.Item(id="1")
        if request.restaurant_id == "boom":
            raise RuntimeError("mid-stream")


@contextmanager
def sync_server(servicer: Any, port: int = 0) -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[ServerInterceptor()])
    food_pb2_grpc.add_MenuServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield bound
    finally:
        server.stop(None)


def test_sync_call_is_retried_after_pushback_and_carries_context() -> None:
    """UNAVAILABLE with pushback then OK: the sync call sleeps 0.1 s (fake) and succeeds."""
    clock = FakeClock()
    servicer = SyncMenu(S.UNAVAILABLE)
    with (
        sync_server(servicer) as port,
        channel(f"127.0.0.1:{port}", service("menu", clock=clock)) as ch,
        use_correlation_id("sync-1"),
    ):
        answer = food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request(), timeout=2.0)
    assert answer.restaurant_id == "r1"
    assert clock.sleeps == [0.1]
    assert [s[0] for s in servicer.seen] == ["sync-1", "sync-1"]
    assert all(s[1] is not None and 0 < s[1] <= 2.01 for s in servicer.seen)


def test_sync_with_call_returns_the_call_with_the_echoed_id() -> None:
    """with_call gives the finished call; its trailing metadata holds the id."""
    with (
        sync_server(SyncMenu()) as port,
        channel(f"127.0.0.1:{port}", service("menu")) as ch,
        use_correlation_id("sync-2"),
    ):
        _, call = food_pb2_grpc.MenuServiceStub(ch).GetMenu.with_call(menu_request())
    assert trailing_id(call.trailing_metadata()) == "sync-2"


def test_sync_non_retryable_status_raises_grpc_error_once() -> None:
    """NOT_FOUND from a sync server: one attempt, grpc's RpcError with the code."""
    servicer = SyncMenu(S.NOT_FOUND)
    with (
        sync_server(servicer) as port,
        channel(f"127.0.0.1:{port}", service("menu")) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request())
    assert err.value.code() is S.NOT_FOUND  # type: ignore[attr-defined]
    assert len(servicer.seen) == 1


def test_sync_handler_exception_is_internal_with_the_id() -> None:
    """A sync handler's bug: INTERNAL, safe details, correlation id in trailing metadata."""
    with (
        sync_server(SyncMenu()) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        food_pb2_grpc.MenuServiceStub(ch).GetMenu(
            menu_request("boom"), metadata=(("x-request-id", "sb-1"),)
        )
    e: Any = err.value
    assert (e.code(), e.details()) == (S.INTERNAL, "internal error")
    assert trailing_id(e.trailing_metadata()) == "sb-1"


def test_sync_breaker_opens_on_server_down_and_fallback_answers() -> None:
    """Connection refused twice opens the breaker; the fallback answers the rest."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "menu", record_exceptions=BREAKER_FAILURES, minimum_calls=2, clock=clock
    )
    fallback = Fallback(food_pb2.Menu(restaurant_id="cached"), on=should_fall_back)
    svc = service("menu", retries=0, breaker=breaker, fallback=fallback, clock=clock)
    with channel(f"127.0.0.1:{free_port()}", svc) as ch:
        stub = food_pb2_grpc.MenuServiceStub(ch)
        answers = [stub.GetMenu(menu_request()).restaurant_id for _ in range(4)]
        _, call = stub.GetMenu.with_call(menu_request())
    assert answers == ["cached"] * 4
    assert breaker.metrics.rejected_total == 3
    assert call.code() is S.OK
    assert call.result().restaurant_id == "cached"


def test_sync_server_stream_passes_through_and_fails_safely() -> None:
    """A sync server stream gets the context; a failure mid-stream is INTERNAL."""
    servicer = SyncMenu()
    with sync_server(servicer) as port, channel(f"127.0.0.1:{port}", service("menu")) as ch:
        stub = food_pb2_grpc.MenuServiceStub(ch)
        with use_correlation_id("st-1"):
            assert [i.id for i in stub.ListItems(menu_request())] == ["1"]
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ListItems(menu_request("boom")))
    assert err.value.code() is S.INTERNAL  # type: ignore[attr-defined]
    assert servicer.seen[0][0] == "st-1"


class FakeSyncContext:
    """Just enough of a sync ServicerContext: abort() raises, as grpc's does."""

    def __init__(self, time_remaining: float, metadata: Any = ()) -> None:
        self._left = time_remaining
        self._metadata = metadata
        self.trailing: Any = ()
        self.aborted: tuple[Any, ...] | None = None

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float:
        return self._left

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md

    def trailing_metadata(self) -> Any:
        return self.trailing

    def code(self) -> Any:
        return None if self.aborted is None else self.aborted[0]

    def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise Exception()


def test_sync_expired_deadline_is_refused_without_running_the_handler() -> None:
    """A sync handler whose deadline already passed is answered DEADLINE_EXCEEDED, not run."""
    ran: list[bool] = []

    def handler(request: Any, context: Any) -> Any:
        ran.append(True)

    wrapped = ServerInterceptor()._wrap(handler, "/food.v1.MenuService/GetMenu")
    context = FakeSyncContext(0.0, (("x-request-id", "late-2"),))
    with pytest.raises(Exception):
        wrapped(None, context)
    assert ran == []
    assert context.aborted == (S.DEADLINE_EXCEEDED, "deadline expired before start")
    assert trailing_id(context.trailing) == "late-2"


def test_sync_no_deadline_is_read_as_none() -> None:
    """grpc's sync "infinite" time_remaining() (about 9e18 s) is no deadline at all."""
    seen: list[float | None] = []

    def handler(request: Any, context: Any) -> Any:
        seen.append(remaining())

    ServerInterceptor()._wrap(handler, "/x/Y")(None, FakeSyncContext(9.2e18))
    assert seen == [None]
