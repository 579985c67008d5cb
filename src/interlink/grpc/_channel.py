"""What a generated stub needs of a channel and of the multicallables it hands out, written once
for the channel-like objects (``DirectChannel``, ``ResolvedChannel``, ``LocalChannel``).

A stub asks the channel for one multicallable per method (``unary_unary(method,
request_serializer=..., response_deserializer=..., _registered_method=...)`` and its three
siblings) and calls it with grpc's keywords (``timeout``, ``metadata``, ``credentials``,
``wait_for_ready``, ``compression``). ``ChannelLike`` turns the four into one
``_multicallable(kind, ...)``; ``Multicallable`` turns the keywords into one positional
``_invoke(...)`` (compression is not passed on: none of these channels applies it per call).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["ChannelLike", "Kind", "MethodMulticallable", "Multicallable", "send"]

Kind = Literal["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


def send(multicallable: Any, request: Any, details: Any) -> Any:
    """``multicallable(request, ...)`` with the timeout, metadata, credentials and wait_for_ready
    of ``details`` (a ``grpc.aio.ClientCallDetails``, or a tuple in its order)."""
    _, timeout, metadata, credentials, wait_for_ready = details
    return multicallable(
        request,
        timeout=timeout,
        metadata=metadata,
        credentials=credentials,
        wait_for_ready=wait_for_ready,
    )


class Multicallable:
    """A multicallable: grpc's call signature, handed to ``_invoke(request, timeout, metadata,
    credentials, wait_for_ready)``."""

    __slots__ = ()

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        return self._invoke(request, timeout, metadata, credentials, wait_for_ready)

    def _invoke(self, request: Any, *call: Any) -> Any:
        raise NotImplementedError


class MethodMulticallable(Multicallable):
    """A multicallable for one ``method`` of a channel-like object, with the serializer and
    deserializer the stub gave."""

    __slots__ = ("_channel", "_deserialize", "_method", "_serialize")

    def __init__(self, channel: Any, method: str, serialize: Any, deserialize: Any) -> None:
        self._channel = channel
        self._method = method
        self._serialize = serialize
        self._deserialize = deserialize


def _channel_method(kind: Kind) -> Any:
    def make(
        self: ChannelLike,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Any:
        return self._multicallable(
            kind, method, request_serializer, response_deserializer, _registered_method
        )

    make.__name__ = make.__qualname__ = kind
    make.__doc__ = f"The multicallable for a {kind.replace('_', '-')} call to ``method``."
    return make


class ChannelLike:
    """The four channel methods a stub calls, each handed to ``_multicallable``; ``close`` and
    ``async with``."""

    __slots__ = ()

    def _multicallable(self, kind: Kind, method: str, *codec: Any) -> Any:
        """The multicallable of ``kind`` for ``method``; ``codec``: the request serializer, the
        response deserializer and whether the method is registered (grpc's arguments)."""
        raise NotImplementedError

    unary_unary = _channel_method("unary_unary")
    unary_stream = _channel_method("unary_stream")
    stream_unary = _channel_method("stream_unary")
    stream_stream = _channel_method("stream_stream")

    async def close(self, grace: float | None = None) -> None:
        """Close what the channel holds."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
