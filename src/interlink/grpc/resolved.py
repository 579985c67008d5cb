"""``service://name`` targets: each attempt goes to an instance a resolver picks.

A ``grpc.aio`` channel talks to one target, and an interceptor cannot move a call to another
channel, so a resolved target is served by ``ResolvedChannel``, which stubs accept like a channel:
each attempt of a unary call asks the resolver for an instance (``pick(service)``, or
``await apick(service)`` when the resolver has it), sends the attempt over a plain channel to
that instance's address (one per address, created on first use and kept), and reports the
attempt's outcome with ``picked.done(ok)``, ``ok`` being False for the statuses that count
against a breaker. The same ``Service`` pipeline and propagation as ``aio_channel`` apply, so a
retry can land on another instance. Server-streaming calls pick one instance per call and get
propagation only; client- and bidirectional-streaming calls are not offered here (open a channel
to ``picked.instance`` yourself).

``interlink.discovery.Resolver`` is an ``interlink.discovery.Picker``; so is any object with
``pick(service, avoid=()) -> Picked``. A retry's pick avoids the instances that failed earlier
in the same call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, NoReturn

import grpc
import grpc.aio

from interlink.discovery.resolver import Address, Picked, Picker

from ._channel import ChannelLike, Kind, MethodMulticallable, Multicallable, send
from ._metadata import attempt_timeout, outgoing
from ._unary import AioUnaryInterceptor, _Call
from .policy import Service
from .policy import service as default_service
from .status import BREAKER_FAILURE_CODES

__all__ = [
    "SCHEME",
    "ResolvedChannel",
    "resolved_channel",
]

#: Targets naming a service rather than an address.
SCHEME = "service://"


def _ok(exc: BaseException) -> bool:
    """The instance answered (a caller error is still an answer), or the attempt was cancelled
    (by the caller or a hedge that answered first), which says nothing against the instance."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in BREAKER_FAILURE_CODES


class _PickedCall:
    """A unary call to a picked instance; reports to the resolver once, when it finishes."""

    __slots__ = ("_call", "_failed", "_picked")

    def __init__(self, call: Any, picked: Picked, failed: list[Address]) -> None:
        self._call = call
        self._picked: Picked | None = picked
        self._failed = failed

    def __await__(self) -> Generator[Any, None, Any]:
        picked, self._picked = self._picked, None  # awaited again later: already reported
        try:
            response = yield from self._call.__await__()
        except BaseException as exc:
            if picked is not None:
                ok = _ok(exc)
                picked.done(ok)
                if not ok:  # a retry of this call goes elsewhere while it can
                    self._failed.append(picked.instance)
            raise
        if picked is not None:
            picked.done(True)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _PickedStream:
    """A server stream from one picked instance, picked when iteration starts."""

    __slots__ = ("_open",)

    def __init__(self, open_: Callable[[], Awaitable[tuple[Any, Picked]]]) -> None:
        self._open = open_

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        call, picked = await self._open()
        try:
            async for item in call:
                yield item
        except BaseException as exc:
            picked.done(_ok(exc))
            raise
        picked.done(True)


def _not_offered(what: str, *args: Any, **kwargs: Any) -> NoReturn:
    raise NotImplementedError(what)


class _Unary(MethodMulticallable):
    """A unary multicallable: each attempt goes to an instance the resolver picks."""

    __slots__ = ()
    _channel: ResolvedChannel

    async def _send(
        self, kind: Kind, request: Any, details: Any, failed: list[Address] | None = None
    ) -> tuple[Any, Picked]:
        """Pick an instance (avoiding ``failed``) and start the call there; a call that cannot
        even start counts against the instance (and joins ``failed``)."""
        channel = self._channel
        picked = await channel._pick(failed)
        try:
            made = channel._callable(picked, kind, self._method, self._serialize, self._deserialize)
            return send(made, request, details), picked
        except BaseException:
            picked.done(False)
            if failed is not None:
                failed.append(picked.instance)
            raise

    async def _invoke(self, request: Any, *call: Any) -> Any:
        failed: list[Address] = []  # the instances that failed an attempt of this call

        async def continuation(details: Any, request: Any) -> _PickedCall:
            started, picked = await self._send("unary_unary", request, details, failed)
            return _PickedCall(started, picked, failed)

        details = grpc.aio.ClientCallDetails(self._method, *call)
        result = await self._channel._unary.intercept_unary_unary(continuation, details, request)
        return await result if isinstance(result, _Call | _PickedCall) else result


class _Stream(_Unary):
    """A server-stream multicallable: one instance per call, propagation only."""

    __slots__ = ()

    def _invoke(  # type: ignore[override] # a stream, not a coroutine
        self, request: Any, *call: Any
    ) -> _PickedStream:
        timeout, metadata, credentials, wait_for_ready = call
        left, _ = attempt_timeout(None, timeout)
        details = (self._method, left, outgoing(metadata), credentials, wait_for_ready)
        return _PickedStream(functools.partial(self._send, "unary_stream", request, details))


class ResolvedChannel(ChannelLike):
    """A channel-like object for a ``service://name`` target; see the module docstring."""

    def __init__(
        self,
        name: str,
        resolver: Picker,
        service: Service,
        *,
        channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
        tracer_provider: object | None = None,
    ) -> None:
        self.name = name
        self.resolver = resolver
        self.service = service
        self._factory = channel_factory
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}
        self._unary = AioUnaryInterceptor(service, tracer_provider=tracer_provider)
        apick = getattr(resolver, "apick", None)
        self._apick: Callable[..., Awaitable[Picked]] | None = apick

    async def _pick(self, avoid: list[Address] | None = None) -> Picked:
        if self._apick is not None:
            return await (self._apick(self.name, avoid) if avoid else self._apick(self.name))
        return self.resolver.pick(self.name, avoid) if avoid else self.resolver.pick(self.name)

    def _callable(self, picked: Picked, kind: str, method: str, ser: Any, de: Any) -> Any:
        host, port = picked.instance.host, picked.instance.port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 bracketed
        found = self._callables.get((address, method))
        if found is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = self._factory(address)
            make = getattr(channel, kind)
            found = make(method, request_serializer=ser, response_deserializer=de)
            self._callables[(address, method)] = found
        return found

    def _multicallable(
        self, kind: Kind, method: str, *codec: Any
    ) -> Multicallable | Callable[..., NoReturn]:
        """Unary calls through the service's pipeline, an instance per attempt; server streams
        from one instance per call, with propagation only; client and bidirectional streams
        are not offered (they cannot be replayed to another instance): calling them raises
        ``NotImplementedError``."""
        if kind == "unary_unary":
            return _Unary(self, method, *codec[:2])
        if kind == "unary_stream":
            return _Stream(self, method, *codec[:2])
        return functools.partial(_not_offered, f"{method}: {kind} over {SCHEME}{self.name}")

    async def close(self, grace: float | None = None) -> None:
        """Close every per-instance channel."""
        channels = list(self._channels.values())
        self._channels.clear()
        self._callables.clear()
        for channel in channels:
            await channel.close(grace)


def resolved_channel(
    target: str,
    resolver: Picker,
    service: Service | None = None,
    *,
    channel_factory: Callable[[str], grpc.aio.Channel] = grpc.aio.insecure_channel,
    tracer_provider: object | None = None,
) -> ResolvedChannel:
    """A channel for ``service://name``: instances from ``resolver``, policies from ``service``
    (default: ``interlink.grpc.service(name)``)."""
    if not target.startswith(SCHEME) or not target[len(SCHEME) :]:
        raise ValueError(f"'target' must look like '{SCHEME}name': {target!r}")
    name = target[len(SCHEME) :]
    return ResolvedChannel(
        name,
        resolver,
        service if service is not None else default_service(name),
        channel_factory=channel_factory,
        tracer_provider=tracer_provider,
    )
