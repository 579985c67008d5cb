"""gRPC inside one process: the same servicers and stubs, no socket in between.

A ``LocalServer`` stands in for ``grpc.aio.server()``: the generated
``add_XServicer_to_server(servicer, server)`` registers on it, ``add_insecure_port(address)``
binds it to an address in a process-wide table (no socket is opened), and ``start``/``stop``
put it in and out of service. ``channel_factory`` gives channels that call a servicer bound
at the target address directly, and fall back to a real channel for any other address, so a
client (``resolved_channel(..., channel_factory=local.channel_factory())``) reaches in-process
and remote instances alike::

    server = LocalServer()
    food_pb2_grpc.add_MenuServiceServicer_to_server(Menu(), server)
    server.add_insecure_port("127.0.0.1:50051")
    await server.start()
    stub = food_pb2_grpc.MenuServiceStub(local_channel("127.0.0.1:50051"))

What stays the same as over the network: messages are serialized and parsed again on each side
(a servicer never shares the caller's objects), ``context.abort()`` and errors become a
``grpc.aio.AioRpcError`` with the status, the call's timeout becomes ``DEADLINE_EXCEEDED``, a
stopped server answers ``UNAVAILABLE``, and the caller's deadline, correlation id and trace
context reach the servicer (it runs in a task that copies the caller's context). What is not
there: server interceptors (the context already carries what they would set), compression,
credentials, and client, or bidirectional streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Sequence
from typing import Any, NoReturn

import grpc

from ._channel import ChannelLike, Kind, MethodMulticallable

__all__ = ["LocalServer", "channel_factory", "local_channel"]

# Process-wide by design, like a port: addresses a LocalServer is bound to in this process.
_BOUND: dict[str, LocalServer] = {}


def _status_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Context:
    """The part of ``grpc.aio.ServicerContext`` servicers use."""

    def __init__(self, metadata: Sequence[tuple[str, str]], deadline_at: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline_at = deadline_at
        self._trailing: tuple[tuple[str, str], ...] = ()
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        self._trailing = tuple(trailing_metadata or ())
        raise _Abort(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def time_remaining(self) -> float | None:
        return None if self._deadline_at is None else max(0.0, self._deadline_at - time.monotonic())

    def peer(self) -> str:
        return "local"

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False


class LocalServer:
    """A ``grpc.aio.server()`` stand-in serving in this process only (see the module docs)."""

    def __init__(self, interceptors: Iterable[Any] = ()) -> None:
        # Interceptors are accepted for signature compatibility and not run: the servicer runs
        # in the caller's context, which already holds deadline, correlation id and trace.
        self._methods: dict[str, Any] = {}
        self._generic: list[Any] = []
        self._addresses: list[str] = []
        self._stopped = asyncio.Event()
        self.serving = False

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        """What generated code calls: keep the handlers to look methods up in."""
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        """What newer generated code calls too: the handlers by method name."""
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        """Bind to ``address`` in this process (no socket); returns its port."""
        if address in _BOUND and _BOUND[address] is not self:
            raise ValueError(f"'address' is served in this process already: {address!r}")
        _BOUND[address] = self
        self._addresses.append(address)
        port = address.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() else 0

    def handler(self, method: str) -> Any:
        """The method handler for ``/package.Service/Method``, or None."""
        found = self._methods.get(method)
        if found is not None:
            return found
        details = _Details(method)
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                self._methods[method] = found
                return found
        return None

    async def start(self) -> None:
        """Start answering calls."""
        self.serving = True
        self._stopped.clear()

    async def stop(self, grace: float | None = None) -> None:
        """Stop answering (calls get UNAVAILABLE) and give the addresses back."""
        self.serving = False
        self._stopped.set()
        for address in self._addresses:
            if _BOUND.get(address) is self:
                del _BOUND[address]
        self._addresses.clear()

    async def wait_for_termination(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - grpc's signature
    ) -> bool:
        """Wait until stopped, or ``timeout`` seconds (grpc's signature); whether it stopped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._stopped.wait()
        return not self.serving


class _Details:
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: tuple[tuple[str, str], ...] = ()


class LocalCall(grpc.aio.UnaryUnaryCall):  # type: ignore[type-arg]
    """A unary call answered in this process; awaiting it gives the response or raises
    ``grpc.aio.AioRpcError`` as a network call would."""

    def __init__(self, task: asyncio.Task[Any], deadline_at: float | None) -> None:
        self._task = task
        self._deadline_at = deadline_at

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline_at is None else max(0.0, self._deadline_at - time.monotonic())

    def cancel(self) -> bool:
        return self._task.cancel()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._task.add_done_callback(lambda _: callback(self))

    def _error(self) -> grpc.aio.AioRpcError | None:
        if not self._task.done() or self._task.cancelled():
            return None
        exc = self._task.exception()
        return exc if isinstance(exc, grpc.aio.AioRpcError) else None

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._task)
        error = self._error()
        return error.trailing_metadata() if error is not None else grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._task)
        if self._task.cancelled():
            return grpc.StatusCode.CANCELLED
        error = self._error()
        if error is not None:
            return error.code()
        return grpc.StatusCode.OK if self._task.exception() is None else grpc.StatusCode.UNKNOWN

    async def details(self) -> str:
        with contextlib.suppress(BaseException):
            await asyncio.shield(self._task)
        error = self._error()
        return (error.details() or "") if error is not None else ""

    async def debug_error_string(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        return None


class _Unary(MethodMulticallable):
    __slots__ = ()

    def _invoke(self, request: Any, *call: Any) -> LocalCall:
        timeout, metadata, _, _ = call
        deadline_at = None if timeout is None else time.monotonic() + timeout
        task = asyncio.ensure_future(self._answer(request, timeout, metadata, deadline_at))
        # (the task copies the caller's context: deadline, correlation id, trace)
        return LocalCall(task, deadline_at)

    async def _answer(
        self, request: Any, seconds: float | None, metadata: Any, deadline_at: float | None
    ) -> Any:
        server = _BOUND.get(self._channel.target)
        if server is None or not server.serving:
            raise _status_error(grpc.StatusCode.UNAVAILABLE, "no local server at the address")
        handler = server.handler(self._method)
        if handler is None or handler.unary_unary is None:
            raise _status_error(grpc.StatusCode.UNIMPLEMENTED, f"{self._method} not served")
        data = self._serialize(request) if self._serialize is not None else request
        parsed = handler.request_deserializer(data) if handler.request_deserializer else data
        context = _Context(tuple(metadata or ()), deadline_at)
        try:
            async with asyncio.timeout(seconds):
                response = await handler.unary_unary(parsed, context)
        except _Abort as abort:
            raise _status_error(abort.code, abort.details) from None
        except TimeoutError:
            raise _status_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except grpc.aio.AioRpcError:
            raise _status_error(grpc.StatusCode.UNKNOWN, "Unexpected error") from None
        except Exception:
            raise _status_error(grpc.StatusCode.UNKNOWN, "Unexpected error") from None
        if context._code not in (None, grpc.StatusCode.OK):
            raise _status_error(context._code, context._details)
        out = handler.response_serializer(response) if handler.response_serializer else response
        return self._deserialize(out) if self._deserialize is not None else out


class _Stream(MethodMulticallable):
    __slots__ = ()

    def _invoke(self, request: Any, *call: Any) -> AsyncIterator[Any]:
        return self._iterate(request)

    async def _iterate(self, request: Any) -> AsyncIterator[Any]:
        server = _BOUND.get(self._channel.target)
        handler = None if server is None or not server.serving else server.handler(self._method)
        if handler is None or handler.unary_stream is None:
            raise _status_error(grpc.StatusCode.UNAVAILABLE, "no local server at the address")
        data = self._serialize(request) if self._serialize is not None else request
        parsed = handler.request_deserializer(data) if handler.request_deserializer else data
        try:
            async for item in handler.unary_stream(parsed, _Context((), None)):
                out = handler.response_serializer(item) if handler.response_serializer else item
                yield self._deserialize(out) if self._deserialize is not None else out
        except _Abort as abort:
            raise _status_error(abort.code, abort.details) from None


class LocalChannel(ChannelLike):
    """What a stub needs of a channel, calling the servicer bound at ``target`` directly."""

    def __init__(self, target: str) -> None:
        self.target = target

    def _multicallable(self, kind: Kind, method: str, *codec: Any) -> Any:
        if kind == "unary_unary":
            return _Unary(self, method, *codec[:2])
        if kind == "unary_stream":
            return _Stream(self, method, *codec[:2])
        return _unsupported

    async def channel_ready(self) -> None:
        return None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        served = self.target in _BOUND and _BOUND[self.target].serving
        return grpc.ChannelConnectivity.READY if served else grpc.ChannelConnectivity.IDLE


def _unsupported(*args: Any, **kwargs: Any) -> NoReturn:
    raise NotImplementedError("client and bidirectional streams are not served in-process")


def local_channel(target: str) -> LocalChannel:
    """A channel to the ``LocalServer`` bound at ``target`` in this process."""
    return LocalChannel(target)


def channel_factory(
    fallback: Callable[[str], Any] = grpc.aio.insecure_channel,
) -> Callable[[str], Any]:
    """A ``channel_factory`` for ``resolved_channel``/``direct_channel``: a local channel for an
    address a ``LocalServer`` of this process is bound to, ``fallback(target)`` otherwise."""

    def make(target: str) -> Any:
        return LocalChannel(target) if target in _BOUND else fallback(target)

    return make
