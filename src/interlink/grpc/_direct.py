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

from ._metadata import attempt_timeout, outgoing
from ._unary import AioUnaryInterceptor, _Call, _new_tuple
from .policy import Service

__all__ = ["DirectChannel", "direct_channel"]

_Details = grpc.aio.ClientCallDetails


class _Unary:
    """A unary-unary multicallable: the fast path of ``AioUnaryInterceptor``, called in place."""

    __slots__ = ("_continuation", "_method", "_multicallable", "_unary")

    def __init__(self, unary: AioUnaryInterceptor, method: str, multicallable: Any) -> None:
        self._unary = unary
        self._method = method
        self._multicallable = multicallable

        async def continuation(details: grpc.aio.ClientCallDetails, request: Any) -> Any:
            return multicallable(
                request,
                timeout=details.timeout,
                metadata=details.metadata,
                credentials=details.credentials,
                wait_for_ready=details.wait_for_ready,
            )

        self._continuation = continuation

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> _Call:
        d = _new_tuple(_Details, (self._method, timeout, metadata, credentials, wait_for_ready))
        job = self._unary._fast_job(self._continuation, d, request)
        if job is None:  # through the pipeline, in a task, as the interceptor would
            call = _Call(None, None)
            call._outcome = asyncio.ensure_future(self._through_pipeline(call, d, request))
            return call
        details = job[3]
        return _Call(
            self._multicallable(
                request,
                timeout=details.timeout,
                metadata=details.metadata,
                credentials=credentials,
                wait_for_ready=wait_for_ready,
            ),
            job,
        )

    async def _through_pipeline(
        self, call: _Call, d: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        result = await self._unary._through_pipeline(self._continuation, d, request, call)
        if result is not None and result is call._call:
            return await result
        call._call = None  # the fallback answered
        return result


class _Propagating:
    """A streaming multicallable: the metadata and the deadline, nothing else."""

    __slots__ = ("_multicallable",)

    def __init__(self, multicallable: Any) -> None:
        self._multicallable = multicallable

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        **kwargs: Any,
    ) -> Any:
        left, _ = attempt_timeout(None, timeout)
        return self._multicallable(request, timeout=left, metadata=outgoing(metadata), **kwargs)


class DirectChannel:
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

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> _Unary:
        """A multicallable whose calls go through the service's pipeline."""
        return _Unary(
            self._unary,
            method,
            self.channel.unary_unary(  # type: ignore[call-arg] # grpc's stubs lack it
                method,
                request_serializer,
                response_deserializer,
                _registered_method=_registered_method,
            ),
        )

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _Propagating:
        """A server stream, with the metadata and the deadline."""
        return _Propagating(self.channel.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _Propagating:
        """A client stream, with the metadata and the deadline."""
        return _Propagating(self.channel.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _Propagating:
        """A bidirectional stream, with the metadata and the deadline."""
        return _Propagating(self.channel.stream_stream(method, *args, **kwargs))

    async def close(self, grace: float | None = None) -> None:
        """Close the channel."""
        await self.channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        # the rest of the channel's API (channel_ready, get_state, ...) is the channel's own
        return getattr(self.channel, name)

    async def __aenter__(self) -> DirectChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
