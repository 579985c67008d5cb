"""REST JSON to gRPC unary: a route with a ``grpc`` section answers by calling one method.

The request's JSON body (an empty body is ``{}``), its query parameters and the route's path
parameters (``/menus/{restaurant_id}``) fill the method's request message by field name; the
response message comes back as JSON (field names as in the ``.proto``). The message types come
from the service's descriptors: a generated module (``descriptors: examples.proto.food_pb2``)
or the server's reflection service (``descriptors: reflection``, fetched once per target and
cached).

The correlation id, trace context and identity headers travel as gRPC metadata. A non-OK status
becomes an HTTP status (``STATUS_FOR_CODE``: NOT_FOUND 404, INVALID_ARGUMENT 400, UNAVAILABLE
503, DEADLINE_EXCEEDED 504, ...) with a JSON body ``{"error", "reason": "grpc_<code>",
"status", "request_id", "grpc_status"}``; the server's message is passed on, but nothing else of
its internals.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from typing import Any
from urllib.parse import parse_qsl

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from interlink.gateway.config import GrpcConfig
from interlink.grpc import local
from interlink.proxy.errors import ProxyError
from interlink.proxy.http1 import Request
from interlink.proxy.router import Match
from interlink.resilience import remaining

__all__ = ["STATUS_FOR_CODE", "translator_for"]

S = grpc.StatusCode
_open_channel = local.channel_factory()
#: The HTTP status each gRPC status code becomes (as Google's API gateways map them).
STATUS_FOR_CODE: dict[grpc.StatusCode, int] = {
    S.OK: 200,
    S.CANCELLED: 499,
    S.UNKNOWN: 500,
    S.INVALID_ARGUMENT: 400,
    S.DEADLINE_EXCEEDED: 504,
    S.NOT_FOUND: 404,
    S.ALREADY_EXISTS: 409,
    S.PERMISSION_DENIED: 403,
    S.RESOURCE_EXHAUSTED: 429,
    S.FAILED_PRECONDITION: 400,
    S.ABORTED: 409,
    S.OUT_OF_RANGE: 400,
    S.UNIMPLEMENTED: 501,
    S.INTERNAL: 500,
    S.UNAVAILABLE: 503,
    S.DATA_LOSS: 500,
    S.UNAUTHENTICATED: 401,
}
_JSON = [("content-type", "application/json")]


class _Method:
    """The request and response classes of one method, resolved once."""

    def __init__(self, path: str, request_cls: type[Message], response_cls: type[Message]):
        self.path = path
        self.request_cls = request_cls
        self.response_cls = response_cls


def _from_pool(pool: Any, full_method: str) -> _Method:
    service_name, method_name = full_method.rsplit("/", 1)
    service = pool.FindServiceByName(service_name)
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise ValueError(f"{service_name} has no method {method_name!r}")
    if method.client_streaming or method.server_streaming:
        raise ValueError(f"{full_method} streams; only unary methods are translated")
    return _Method(
        f"/{service_name}/{method_name}",
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
    )


def _from_module(module_name: str, full_method: str) -> _Method:
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"'descriptors': cannot import {module_name!r}: {error}") from None
    file_descriptor = getattr(module, "DESCRIPTOR", None)
    if file_descriptor is None:
        raise ValueError(f"'descriptors': {module_name!r} is not a generated _pb2 module")
    return _from_pool(file_descriptor.pool, full_method)


def _from_reflection(target: str, full_method: str) -> _Method:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # type: ignore[import-untyped]
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        return _from_pool(pool, full_method)


class _Translator:
    """Calls ``config.method`` on ``config.target`` for each matched request."""

    def __init__(self, config: GrpcConfig, resolver: Any) -> None:
        self.config = config
        self._resolver = resolver
        self._method: _Method | None = None
        if config.descriptors != "reflection":
            self._method = _from_module(config.descriptors, config.method)
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def _target(self) -> tuple[str, Any]:
        target = self.config.target
        if target.startswith("service://"):
            from interlink.errors import NoInstancesError

            name = target.removeprefix("service://")
            try:
                picked = await self._resolver.apick(name)
            except NoInstancesError:
                raise ProxyError(
                    "no_healthy_instance", f"no healthy instance of {name!r} is available"
                ) from None
            return picked.instance.address, picked
        return target, None

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # local.channel_factory: a servicer served in this process (a monolith) is called
            # directly, any other address over a real channel
            channel = self._channels[address] = _open_channel(address)
        return channel

    async def __call__(
        self, request: Request, match: Match[Any], metadata: list[tuple[str, str]]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        request_id = metadata[0][1]
        address, picked = await self._target()
        ok = False
        try:
            method = self._method
            if method is None:
                try:
                    method = await asyncio.to_thread(_from_reflection, address, self.config.method)
                except (grpc.RpcError, KeyError, ValueError):
                    raise ProxyError(
                        "upstream_bad_response", "the service's descriptors are not available"
                    ) from None
                self._method = method
            message = await self._message(request, match, method)
            timeout = self.config.timeout
            left = remaining()
            if left is not None:
                timeout = min(timeout, left)
            call: Any = self._channel(address).unary_unary(
                method.path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=method.response_cls.FromString,
            )
            try:
                reply = await call(message, timeout=timeout, metadata=tuple(metadata))
            except grpc.aio.AioRpcError as error:
                code = error.code()
                ok = code not in (S.UNAVAILABLE, S.INTERNAL, S.UNKNOWN, S.DEADLINE_EXCEEDED)
                return _grpc_error(code, error.details() or "", request_id)
            ok = True
            body = json_format.MessageToJson(
                reply, preserving_proto_field_name=True, indent=None
            ).encode()
            return 200, list(_JSON), body
        finally:
            if picked is not None:
                picked.done(ok)

    async def _message(self, request: Request, match: Match[Any], method: _Method) -> Message:
        chunks = [chunk async for chunk in request.body]
        raw = b"".join(chunks)
        try:
            document = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ProxyError("bad_request", "the body is not valid JSON") from None
        if not isinstance(document, dict):
            raise ProxyError("bad_request", "the body must be a JSON object")
        query = request.target.partition("?")[2]
        for key, value in parse_qsl(query):
            document.setdefault(key, value)
        document.update(match.params)
        message = method.request_cls()
        try:
            json_format.ParseDict(document, message)
        except (json_format.ParseError, DecodeError) as error:
            raise ProxyError("bad_request", f"the body does not fit the request: {error}") from None
        return message


def _grpc_error(
    code: grpc.StatusCode, details: str, request_id: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    status = STATUS_FOR_CODE.get(code, 500)
    name = code.name
    body = json.dumps(
        {
            "error": details[:500] or name.lower().replace("_", " "),
            "reason": "grpc_" + name.lower(),
            "status": status,
            "request_id": request_id,
            "grpc_status": name,
        },
        separators=(",", ":"),
    ).encode()
    return status, list(_JSON), body


def translator_for(config: GrpcConfig, resolver: Any) -> _Translator:
    """The translator of one route (descriptors from a module are resolved now, so a bad
    module or method fails the configuration check)."""
    return _Translator(config, resolver)
