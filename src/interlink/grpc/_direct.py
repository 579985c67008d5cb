"""``direct_channel("host:port", svc)``: interlink's policies without grpc.aio's interceptors.

grpc.aio runs every call of a channel that has unary-unary interceptors in a task of its own,
with an intercepted-call object around grpc's call, whatever the interceptors do: a no-op
interceptor already costs several per cent of a loopback call's client CPU (see
``docs/performance.md``). ``DirectChannel`` is a channel-like object (stubs take it) over a plain
``grpc.aio`` channel whose unary-unary multicallables run the same code as
``AioUnaryInterceptor`` directly in the caller, without that machinery. A call returns a
``grpc.aio.UnaryUnaryCall`` as a plain channel does (``await`` it for the response; its code,
details and metadata are the attempt's that settled it); only the grpc.aio interceptors' own
work is left out. Streaming calls get the propagation (metadata and the deadline), as with the
interceptors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from ._channel import ChannelLike, Kind, Multicallable, send
from ._metadata import attempt_timeout, outgoing
from ._unary import AioUnaryInterceptor, _Call, _new_tuple, pending
from .policy import Service

__all__ = ["DirectChannel", "direct_channel"]

_Details = grpc.aio.ClientCallDetails


class _Unary(Multicallable):
    """A unary-unary multicallable: the fast path of ``AioUnaryInterceptor``, called in place."""

    __slots__ = ("_continuation", "_method", "_multicallable", "_unary")

    def __init__(self, unary: AioUnaryInterceptor, method: str, multicallable: Any) -> None:
        self._unary = unary
        self._method = method
        self._multicallable = multicallable

        async def continuation(details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            return send(multicallable, request, details)

        self._continuation = continuation

    def _invoke(
        self, request: Any, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any
    ) -> _Call:
        # named arguments rather than a ``*call`` tuple unpacked again (once per call)
        c = self._unary._fast_job(
            self._continuation,
            self._method,
            timeout,
            metadata,
            credentials,
            wait_for_ready,
            request,
        )
        if c is None:  # through the pipeline, in a task, as the interceptor would
            d = _new_tuple(_Details, (self._method, timeout, metadata, credentials, wait_for_ready))
            c = pending()
            c._outcome = asyncio.ensure_future(self._through_pipeline(c, d, request))
            return c
        # grpc's multicallable, called as send() would
        c._call = self._multicallable(
            request,
            timeout=c._timeout,
            metadata=c._metadata,
            credentials=credentials,
            wait_for_ready=wait_for_ready,
        )
        return c

    async def _through_pipeline(
        self, call: _Call, d: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        result = await self._unary._through_pipeline(self._continuation, d, request, call)
        if result is not None and result is call._call:
            return await result
        call._call = None  # the fallback answered
        return result


class _Propagating(Multicallable):
    """A streaming multicallable: the metadata and the deadline, nothing else."""

    __slots__ = ("_multicallable",)

    def __init__(self, multicallable: Any) -> None:
        self._multicallable = multicallable

    def _invoke(self, request: Any, *call: Any) -> Any:
        timeout, metadata, credentials, wait_for_ready = call
        left, _ = attempt_timeout(None, timeout)
        return send(
            self._multicallable,
            request,
            (None, left, outgoing(metadata), credentials, wait_for_ready),
        )


class DirectChannel(ChannelLike):
    """A channel-like object for one address; see the module docstring."""

    def __init__(
        self,
        target: str,
        service: Service,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
        tracer_provider: object | None = None,
    ) -> None:
        self.target = target
        self.service = service
        self.channel = channel_factory(target)
        self._unary = AioUnaryInterceptor(service, tracer_provider=tracer_provider)

    def _multicallable(self, kind: Kind, method: str, *codec: Any) -> Multicallable:
        """Unary calls go through the service's pipeline; streams get the metadata and the
        deadline."""
        serializer, deserializer, registered = codec
        made = getattr(self.channel, kind)(
            method, serializer, deserializer, _registered_method=registered
        )
        return _Unary(self._unary, method, made) if kind == "unary_unary" else _Propagating(made)

    async def close(self, grace: float | None = None) -> None:
        """Close the channel."""
        await self.channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        # the rest of the channel's API (channel_ready, get_state, ...) is the channel's own
        return getattr(self.channel, name)


def direct_channel(
    target: str,
    service: Service,
    *,
    channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    tracer_provider: object | None = None,
) -> DirectChannel:
    """A channel-like object for one ``host:port`` that runs ``service``'s pipeline without
    grpc.aio's interceptor machinery; see the module docstring."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"'target' must be 'host:port': {target!r}")
    return DirectChannel(
        target, service, channel_factory=channel_factory, tracer_provider=tracer_provider
    )
