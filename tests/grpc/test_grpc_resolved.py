"""service://name targets: a resolver picks an instance for every attempt."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_helpers import Fail, Faulty, food_pb2_grpc, menu_request, serving
from support import free_port

from interlink.context import use_correlation_id
from interlink.grpc import direct_channel, resolved_channel, service
from interlink.testing import FakeClock

S = grpc.StatusCode


@dataclass(frozen=True)
class Instance:
    host: str
    port: int


@dataclass
class Pick:
    instance: Instance
    outcomes: list[tuple[int, bool]]

    def done(self, ok: bool) -> None:
        self.outcomes.append((self.instance.port, ok))


@dataclass
class RoundRobin:
    """A resolver over fixed ports, recording every ``done(ok)``."""

    ports: list[int]
    outcomes: list[tuple[int, bool]] = field(default_factory=list)
    picked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._next = itertools.cycle(self.ports)

    def pick(self, service: str, avoid: Any = ()) -> Pick:
        self.picked.append(service)
        return Pick(Instance("127.0.0.1", next(self._next)), self.outcomes)


def test_a_retry_goes_to_the_next_instance_and_outcomes_are_reported() -> None:
    """First pick is down (UNAVAILABLE, reported not ok), the retry lands on a live one."""
    servicer = Faulty.of()
    down = free_port()

    async def main() -> tuple[Any, RoundRobin]:
        async with serving(servicer) as up:
            resolver = RoundRobin([down, up])
            async with resolved_channel(
                "service://menu", resolver, service("menu", clock=FakeClock())
            ) as ch:
                with use_correlation_id("rs-1"):
                    answer = await food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request())
        return answer, resolver

    answer, resolver = asyncio.run(main())
    assert answer.restaurant_id == "r1"
    assert resolver.picked == ["menu", "menu"]
    assert [ok for _, ok in resolver.outcomes] == [False, True]
    assert servicer.hits[0].metadata["x-request-id"] == "rs-1"


def test_a_caller_error_is_reported_as_an_ok_instance() -> None:
    """NOT_FOUND is an answer: the instance is healthy (done(True)), the caller gets the error."""
    servicer = Faulty.of(Fail(S.NOT_FOUND))

    async def main() -> RoundRobin:
        async with serving(servicer) as up:
            resolver = RoundRobin([up])
            async with resolved_channel("service://menu", resolver) as ch:
                with pytest.raises(grpc.aio.AioRpcError):
                    await food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request())
        return resolver

    assert asyncio.run(main()).outcomes[0][1] is True


def test_server_stream_over_a_resolved_target() -> None:
    """ListItems picks one instance and streams from it."""

    async def main() -> tuple[list[str], RoundRobin]:
        async with serving(Faulty.of()) as up:
            resolver = RoundRobin([up])
            async with resolved_channel("service://menu", resolver) as ch:
                items = [
                    i.id async for i in food_pb2_grpc.MenuServiceStub(ch).ListItems(menu_request())
                ]
        return items, resolver

    items, resolver = asyncio.run(main())
    assert items == ["0", "1", "2"]
    assert resolver.outcomes == [(resolver.ports[0], True)]


def test_target_must_name_a_service() -> None:
    """Only service://name targets are accepted."""
    with pytest.raises(ValueError, match="'target' must look like 'service://name'"):
        resolved_channel("127.0.0.1:50051", RoundRobin([1]))


def test_client_and_bidi_streams_fail_when_called_not_when_the_stub_is_built() -> None:
    """A stub with client-streaming methods can be built; only calling one raises."""
    ch = resolved_channel("service://menu", RoundRobin([1]))
    upload = ch.stream_unary("/food.v1.MenuService/Upload")
    chat = ch.stream_stream("/food.v1.MenuService/Chat")
    with pytest.raises(NotImplementedError, match="Upload: stream_unary over service://menu"):
        upload(iter(()))
    with pytest.raises(NotImplementedError, match="Chat: stream_stream over service://menu"):
        chat(iter(()))
    assert food_pb2_grpc.MenuServiceStub(ch) is not None


def test_works_with_interlink_discovery_resolver() -> None:
    """The discovery Resolver over a memory registry fits the protocol (apick on first use)."""
    from interlink.discovery import Registry, Resolver, ServiceInstance

    servicer = Faulty.of()

    async def main() -> Any:
        async with serving(servicer) as up:
            registry = Registry.from_url("memory://")
            await registry.register(ServiceInstance("menu", "menu-1", "127.0.0.1", up, "grpc"))
            async with (
                Resolver(registry) as resolver,
                resolved_channel("service://menu", resolver) as ch,
            ):
                answer = await food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request())
            await registry.aclose()
        return answer

    assert asyncio.run(main()).restaurant_id == "r1"


def test_direct_channel_runs_the_pipeline_without_interceptors() -> None:
    """direct_channel("host:port"): retries, metadata and the answer, as aio_channel gives."""
    servicer = Faulty.of(Fail(S.UNAVAILABLE))

    async def main() -> Any:
        async with serving(servicer) as port:
            svc = service("menu", clock=FakeClock())
            async with direct_channel(f"127.0.0.1:{port}", svc) as ch:
                with use_correlation_id("direct-1"):
                    return await food_pb2_grpc.MenuServiceStub(ch).GetMenu(menu_request())

    assert asyncio.run(main()).restaurant_id == "r1"
    assert [h.metadata["x-request-id"] for h in servicer.hits] == ["direct-1", "direct-1"]


def test_direct_channel_needs_host_and_port() -> None:
    """A target without a port is refused."""
    with pytest.raises(ValueError, match="'target' must be 'host:port': 'menu'"):
        direct_channel("menu", service("menu"))
