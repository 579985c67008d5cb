"""Turning messages into payloads and payloads into handler arguments; name checks."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

from interlink.messaging.envelope import Envelope

__all__ = ["GROUP", "check_topic", "decoder_for", "payload_of"]

# NATS subjects, RabbitMQ queues and Redis keys all accept these; ".dlq" is reserved.
_TOPIC = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
GROUP = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def check_topic(topic: str) -> str:
    if not isinstance(topic, str) or len(topic) > 200 or not _TOPIC.match(topic):
        raise ValueError(
            "'topic' must be dot-separated words of [A-Za-z0-9_-], at most 200 characters: "
            f"{topic!r}"
        )
    if topic.endswith(".dlq"):
        raise ValueError(f"'topic' must not end with '.dlq' (reserved for DLQs): {topic!r}")
    return topic


def payload_of(message: Any) -> tuple[bytes, str]:
    """(payload bytes, type name) of a pydantic model, bytes, str or JSON-able value."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message), "bytes"
    cls = type(message)
    serializer = getattr(cls, "__pydantic_serializer__", None)
    if serializer is not None:
        return serializer.to_json(message), cls.__name__
    if isinstance(message, str):
        return message.encode(), "str"
    try:
        from pydantic_core import to_json
    except ImportError as exc:  # pragma: no cover - pydantic is how non-bytes messages encode
        raise ImportError(
            "publishing objects needs pydantic: pip install 'interlink[messaging]'"
        ) from exc
    return to_json(message), cls.__name__


def decoder_for(handler: Callable[..., Any]) -> tuple[Callable[[Envelope], Any], Any]:
    """How to turn an envelope into the handler's argument, from its first parameter's
    annotation: a pydantic model, ``bytes`` (or none), ``str``, ``Envelope``, or any type
    pydantic can validate JSON into."""
    params = list(inspect.signature(handler).parameters.values())
    if not params:
        raise ValueError(f"'handler' must take the message as its first argument: {handler!r}")
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        hints = {}
    ann = hints.get(params[0].name, params[0].annotation)
    if ann in (inspect.Parameter.empty, bytes, Any):
        return (lambda env: env.payload), bytes
    if ann is Envelope:
        return (lambda env: env), Envelope
    if ann is str:
        return (lambda env: env.payload.decode()), str
    validate = getattr(ann, "model_validate_json", None)
    if validate is not None:
        return (lambda env: validate(env.payload)), ann
    try:
        from pydantic import TypeAdapter
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "typed handlers need pydantic: pip install 'interlink[messaging]'"
        ) from exc
    adapter: Any = TypeAdapter(ann)
    return (lambda env: adapter.validate_json(env.payload)), ann
