"""Active health checks: ask every instance now and then, take failing ones out of rotation.

Passive ejection only learns from real calls, so an instance nobody calls stays "healthy"
however dead it is; active checks find it first. ``HealthCheck`` is handed to a resolver
(``Resolver(registry, health=HealthCheck())``), which runs one checking task per resolved
service: every ``interval`` seconds each instance gets one request, and
``unhealthy_threshold`` failures in a row take it out of rotation until ``healthy_threshold``
successes in a row bring it back (Envoy's defaults are the same shape).

HTTP instances are asked ``GET <path>`` (default ``/healthz``); any 2xx is healthy. Instances
whose ``protocol`` is ``grpc`` are asked the standard ``grpc.health.v1.Health/Check`` for
``grpc_service`` (default ``""``: the whole server); ``SERVING`` is healthy. The HTTP check is a
few lines of stdlib asyncio (no client library, no connection pool to go stale); the gRPC one
needs grpcio.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interlink.discovery.instance import ServiceInstance
from interlink.resilience._validate import positive, positive_int

if TYPE_CHECKING:
    from interlink.discovery.resolver import Resolver

__all__ = ["HealthCheck", "check_grpc", "check_http"]


async def check_http(
    instance: ServiceInstance, path: str = "/healthz", seconds: float = 0.5
) -> bool:
    """Whether ``GET path`` on ``instance`` answers 2xx within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(
                instance.host, instance.port, ssl=instance.protocol == "https" or None
            )
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {instance.address}\r\n"
                    "User-Agent: interlink-health\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ValueError):
        return False
    parts = status.split()
    return len(parts) >= 2 and parts[1][:1] == b"2"


def _health_request(service: str) -> bytes:
    # HealthCheckRequest { string service = 1; }, encoded by hand: one length-delimited field.
    raw = service.encode()
    size, length = len(raw), bytearray()
    while True:  # the length as a protobuf varint
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            break
    return b"\x0a" + bytes(length) + raw if raw else b""


async def check_grpc(instance: ServiceInstance, service: str = "", seconds: float = 0.5) -> bool:
    """Whether ``grpc.health.v1.Health/Check`` on ``instance`` says ``SERVING`` within
    ``seconds``."""
    try:
        import grpc.aio
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("gRPC health checks need grpcio: pip install 'interlink[grpc]'") from exc
    async with grpc.aio.insecure_channel(instance.address) as channel:
        call: Any = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            reply = await call(_health_request(service), timeout=seconds)
        except grpc.aio.AioRpcError:
            return False
    # HealthCheckResponse { ServingStatus status = 1; }: SERVING is 1.
    return isinstance(reply, bytes) and reply[:2] == b"\x08\x01"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """How often and how to check instances; see the module docstring."""

    interval: float = 1.0
    timeout: float = 0.5
    path: str = "/healthz"
    grpc_service: str = ""
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1

    def __post_init__(self) -> None:
        positive("interval", self.interval)
        positive("timeout", self.timeout)
        positive_int("unhealthy_threshold", self.unhealthy_threshold)
        positive_int("healthy_threshold", self.healthy_threshold)
        if not self.path.startswith("/"):
            raise ValueError(f"'path' must start with '/': {self.path!r}")

    async def check(self, instance: ServiceInstance) -> bool:
        """One check of ``instance``, by its protocol."""
        if instance.protocol == "grpc":
            return await check_grpc(instance, self.grpc_service, self.timeout)
        return await check_http(instance, self.path, self.timeout)

    async def run(self, resolver: Resolver, service: str) -> None:
        """Check ``service``'s instances forever, reporting to ``resolver.set_health``."""
        streaks: dict[str, int] = {}  # > 0: successes in a row, < 0: failures in a row
        while True:
            endpoints = resolver.endpoints(service)
            results = await asyncio.gather(*(self.check(e.instance) for e in endpoints))
            for endpoint, ok in zip(endpoints, results, strict=True):
                key = endpoint.instance.instance_id
                before = streaks.get(key, 0)
                streak = (max(before, 0) + 1) if ok else (min(before, 0) - 1)
                streaks[key] = streak
                if endpoint.healthy and -streak >= self.unhealthy_threshold:
                    resolver.set_health(service, key, False)
                elif not endpoint.healthy and streak >= self.healthy_threshold:
                    resolver.set_health(service, key, True)
            listed = {e.instance.instance_id for e in endpoints}
            for key in [k for k in streaks if k not in listed]:
                del streaks[key]
            await asyncio.sleep(self.interval)
