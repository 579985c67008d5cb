"""Resilient gRPC calls: client and server interceptors for ``grpc.aio`` and sync ``grpc``.

::

    from interlink import grpc as ilgrpc

    menu = ilgrpc.service("menu", idempotent=ilgrpc.idempotent_methods(food_pb2.DESCRIPTOR))
    channel = ilgrpc.direct_channel("menu.internal:50051", menu)    # or service://menu + resolver
    stub = food_pb2_grpc.MenuServiceStub(channel)
    server = grpc.aio.server(interceptors=[ilgrpc.AioServerInterceptor()])

Each downstream ``Service`` owns one pipeline (one breaker, one retry budget) shared by every
call to it; statuses are classified in ``interlink.grpc.status``; the correlation id, the
deadline and the trace context ride along on every call. ``direct_channel`` runs the policies
without grpc.aio's interceptor machinery, which alone costs about 10 % of a loopback call's
client CPU; ``aio_channel``/``aio_interceptors`` give the same as ``grpc.aio`` interceptors, to
combine with others. See ``docs/sync.md``.
"""

try:
    import grpc as _grpc  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError("interlink.grpc needs grpcio: pip install 'interlink[grpc]'") from exc

from interlink.grpc._direct import DirectChannel, direct_channel
from interlink.grpc.client import ClientInterceptor, aio_channel, aio_interceptors, channel
from interlink.grpc.policy import Service, idempotent_methods, service
from interlink.grpc.resolved import ResolvedChannel, resolved_channel
from interlink.grpc.server import AioServerInterceptor, ServerInterceptor
from interlink.grpc.status import (
    BREAKER_FAILURES,
    OWN_REFUSALS,
    StatusError,
    is_retryable,
    should_fall_back,
)

__all__ = [
    "BREAKER_FAILURES",
    "OWN_REFUSALS",
    "AioServerInterceptor",
    "ClientInterceptor",
    "DirectChannel",
    "ResolvedChannel",
    "ServerInterceptor",
    "Service",
    "StatusError",
    "aio_channel",
    "aio_interceptors",
    "channel",
    "direct_channel",
    "idempotent_methods",
    "is_retryable",
    "resolved_channel",
    "service",
    "should_fall_back",
]
