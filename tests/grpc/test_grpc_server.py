"""The server interceptor: correlation id, deadline, safe errors, for grpc.aio handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_helpers import food_pb2, food_pb2_grpc, menu_request, serving, trailing_id

from interlink import RateLimited, remaining
from interlink.context import correlation_id
from interlink.grpc import AioServerInterceptor
from interlink.grpc.status import PUSHBACK_KEY

S = grpc.StatusCode


class Menu(food_pb2_grpc.MenuServiceServicer):
    """Behaves as the restaurant id says."""

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, float | None]] = []

    async def GetMenu(self, request: Any, context: Any) -> Any:
        self.seen.append((correlation_id(), remaining()))
        rid = request.restaurant_id
        if rid == "boom":
            raise RuntimeError("password=hunter2")
        if rid == "limited":
            raise RateLimited("orders", 10.0, 1, 0.3)
        if rid == "abort":
            await context.abort(S.NOT_FOUND, "no such restaurant")
        if rid == "own-trailer":
            context.set_trailing_metadata((("x-extra", "1"),))
        return food_pb2.Menu(restaurant_id=rid)

    async def ListItems(self, request: Any, context: Any) -> Any:
        yield food_pb2.Item(id="1")
        if request.restaurant_id == "boom":
            raise RuntimeError("mid-stream")
        yield food_pb2.Item(id="2")


async def call(rid: str, metadata: Any = None, deadline: float | None = None) -> dict[str, Any]:
    servicer = Menu()
    async with serving(servicer, interceptors=[AioServerInterceptor()]) as port:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        c = food_pb2_grpc.MenuServiceStub(channel).GetMenu(
            menu_request(rid), metadata=metadata, timeout=deadline
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            await c
        out = {
            "code": await c.code(),
            "details": await c.details(),
            "trailing": await c.trailing_metadata(),
            "seen": servicer.seen,
        }
        await channel.close()
    return out


def test_incoming_correlation_id_is_current_and_echoed() -> None:
    """x-request-id from the caller is what the handler sees and what comes back."""
    out = asyncio.run(call("r1", metadata=(("x-request-id", "abc-123"),)))
    assert out["code"] is S.OK
    assert out["seen"][0][0] == "abc-123"
    assert trailing_id(out["trailing"]) == "abc-123"


def test_missing_correlation_id_is_assigned_and_echoed() -> None:
    """Without x-request-id a fresh id is made, used and returned."""
    out = asyncio.run(call("r1"))
    assigned = out["seen"][0][0]
    assert assigned
    assert len(assigned) == 32
    assert trailing_id(out["trailing"]) == assigned


def test_malformed_correlation_id_is_invalid_argument_not_a_crash() -> None:
    """An oversized id is refused with INVALID_ARGUMENT before the handler runs."""
    out = asyncio.run(call("r1", metadata=(("x-request-id", "x" * 500),)))
    assert out["code"] is S.INVALID_ARGUMENT
    assert "x-request-id" in out["details"]
    assert out["seen"] == []


@pytest.mark.parametrize(
    ("size", "codes"),
    [
        (10_000, {S.RESOURCE_EXHAUSTED, S.INVALID_ARGUMENT}),
        (20_000, {S.RESOURCE_EXHAUSTED}),
    ],
)
def test_an_id_past_grpcs_metadata_limit_is_refused_by_grpc(
    size: int, codes: set[grpc.StatusCode]
) -> None:
    """Past gRPC's 8 KB soft metadata limit grpc itself refuses a growing share of calls with
    RESOURCE_EXHAUSTED (all of them past the 16 KB hard limit); the rest reach the interceptor,
    which refuses the id with INVALID_ARGUMENT. The handler never runs (docs/sync.md)."""
    out = asyncio.run(call("r1", metadata=(("x-request-id", "x" * size),)))
    assert out["code"] in codes
    assert out["seen"] == []


def test_incoming_grpc_deadline_becomes_the_current_deadline() -> None:
    """The handler's remaining() is the caller's timeout minus transit."""
    out = asyncio.run(call("r1", deadline=0.8))
    left = out["seen"][0][1]
    assert left is not None
    assert 0.5 < left <= 0.81


def test_no_incoming_deadline_means_no_current_deadline() -> None:
    """A caller without a timeout leaves the handler without a deadline."""
    assert asyncio.run(call("r1"))["seen"][0][1] is None


def test_handler_exception_is_internal_with_a_safe_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug answers INTERNAL "internal error" + the id; the text is only in the log."""
    with caplog.at_level(logging.ERROR, logger="interlink.grpc.server"):
        out = asyncio.run(call("boom", metadata=(("x-request-id", "bug-1"),)))
    assert (out["code"], out["details"]) == (S.INTERNAL, "internal error")
    assert trailing_id(out["trailing"]) == "bug-1"
    assert "hunter2" not in out["details"]
    assert "bug-1" in caplog.text
    assert "hunter2" in caplog.text


def test_interlink_rejection_in_handler_maps_to_resource_exhausted_with_pushback() -> None:
    """RateLimited inside the handler: RESOURCE_EXHAUSTED and pushback in milliseconds."""
    out = asyncio.run(call("limited"))
    assert out["code"] is S.RESOURCE_EXHAUSTED
    assert dict(out["trailing"])[PUSHBACK_KEY] == "300"


def test_handler_abort_passes_through_with_the_id() -> None:
    """context.abort(NOT_FOUND) is the handler's answer; the id still rides back."""
    out = asyncio.run(call("abort", metadata=(("x-request-id", "ab-1"),)))
    assert (out["code"], out["details"]) == (S.NOT_FOUND, "no such restaurant")
    assert trailing_id(out["trailing"]) == "ab-1"


def test_handler_that_sets_trailing_metadata_keeps_the_id() -> None:
    """The handler's own trailing metadata is kept and the id added to it."""
    out = asyncio.run(call("own-trailer", metadata=(("x-request-id", "t-1"),)))
    assert dict(out["trailing"]) == {"x-extra": "1", "x-request-id": "t-1"}


def test_streaming_handler_failure_mid_stream_is_internal() -> None:
    """A server stream that raises after one item ends INTERNAL with the id."""

    async def main() -> tuple[list[str], Any, Any]:
        async with serving(Menu(), interceptors=[AioServerInterceptor()]) as port:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            c = food_pb2_grpc.MenuServiceStub(channel).ListItems(menu_request("boom"))
            items: list[str] = []

            async def read() -> None:
                async for item in c:
                    items.append(item.id)

            with pytest.raises(grpc.aio.AioRpcError):
                await read()
            result = items, await c.code(), await c.trailing_metadata()
            await channel.close()
        return result

    items, code, trailing = asyncio.run(main())
    assert items == ["1"]
    assert code is S.INTERNAL
    assert trailing_id(trailing)


class FakeContext:
    """Just enough of a grpc.aio ServicerContext to call a wrapped behaviour directly."""

    def __init__(self, time_remaining: float | None, metadata: Any = ()) -> None:
        self._left = time_remaining
        self._metadata = metadata
        self.trailing: Any = ()
        self.aborted: tuple[Any, ...] | None = None

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return self._left

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md

    def trailing_metadata(self) -> Any:
        return self.trailing

    async def abort(self, code: Any, details: str, trailing: Any = ()) -> None:
        self.aborted = (code, details, trailing)
        raise grpc.aio.AbortError()


def test_expired_deadline_is_refused_without_running_the_handler() -> None:
    """time_remaining() <= 0: DEADLINE_EXCEEDED with the id, the handler never called."""
    ran: list[bool] = []

    async def handler(request: Any, context: Any) -> Any:
        ran.append(True)

    wrapped = AioServerInterceptor()._wrap(handler, "/food.v1.MenuService/GetMenu")
    context = FakeContext(0.0, (("x-request-id", "late-1"),))
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(wrapped(None, context))
    assert ran == []
    assert context.aborted == (
        S.DEADLINE_EXCEEDED,
        "deadline expired before start",
        (("x-request-id", "late-1"),),
    )


def test_sync_handlers_on_an_aio_server_pass_through_unwrapped() -> None:
    """A plain def handler (run by grpc in a thread) is left as it is."""

    def handler(request: Any, context: Any) -> Any:
        return None

    assert AioServerInterceptor()._wrap(handler, "/x/Y") is None
