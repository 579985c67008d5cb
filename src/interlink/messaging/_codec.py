"""Turning messages into payloads and headers, payloads into handler arguments; name checks."""

from __future__ import annotations

import contextlib
import inspect
import operator
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from interlink.messaging._ids import ID_LENGTH, new_id_text
from interlink.messaging.envelope import Binding, Envelope, OutgoingMessage, headers_for

__all__ = ["GROUP", "batch_of", "check_topic", "decoder_for", "payload_of"]

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


def batch_of(
    messages: Sequence[Any],
    key: str | Callable[[Any], str | None] | None,
    *,
    binding: Binding,
    time: float,
    source: str,
    correlation_id: str | None,
    headers: Mapping[str, str],
) -> list[OutgoingMessage]:
    """The messages of a batch, with fresh ids. They share their headers but for the id (and
    the type and key, where they differ): one set of headers per type and key, copied with
    its id for each message, and given as each message's ``shared`` headers without it."""
    keyof, fixed = (key, None) if callable(key) else (None, key)
    text = new_id_text(len(messages))
    # (type, key) -> the headers with an empty id, and without it (the ``shared`` ones)
    shared: dict[tuple[str, str | None], tuple[dict[str, str], dict[str, str]]] = {}
    id_name = binding.id
    items = []
    at = 0
    for message in messages:
        if type(message) is bytes:
            payload, type_name = message, "bytes"
        else:
            payload, type_name = payload_of(message)
        k = keyof(message) if keyof is not None else fixed
        group = shared.get((type_name, k))
        if group is None:
            base = headers_for(
                binding,
                message_id="",
                type=type_name,
                time=time,
                source=source,
                key=k,
                correlation_id=correlation_id,
                headers=headers,
            )
            common = {name: value for name, value in base.items() if name != id_name}
            group = shared[type_name, k] = (base, common)
        end = at + ID_LENGTH
        mid = text[at:end]
        native = group[0].copy()
        native[id_name] = mid
        items.append(OutgoingMessage(payload, k, native, mid, group[1]))
        at = end
    return items


# Names a handler's first annotation may use without importing them at run time (under
# ``TYPE_CHECKING``, or inside a function): what they mean here is not in doubt.
_KNOWN = {"Envelope": Envelope, "bytes": bytes, "str": str, "Any": Any, "typing.Any": Any}


def _resolved(handler: Callable[..., Any], param: inspect.Parameter) -> Any:
    """The first parameter's annotation as a type, resolved now, when the subscriber is
    declared (``from __future__ import annotations`` leaves it a string): a string that cannot
    be resolved is an error naming the handler and the annotation, never a message sent to
    the DLQ later."""
    ann = param.annotation
    if not isinstance(ann, str):
        return ann
    with contextlib.suppress(Exception):  # another parameter's annotation may be the one
        return typing.get_type_hints(handler).get(param.name, ann)
    name = ann.strip()
    for prefix in ("interlink.messaging.envelope.", "interlink.messaging."):
        name = name.removeprefix(prefix)
    if name in _KNOWN:
        return _KNOWN[name]
    scope = dict(getattr(inspect.unwrap(handler), "__globals__", {}))
    scope.update(_declaring_locals())
    try:
        return eval(ann, scope)  # the handler's own annotation, where it was declared
    except Exception as exc:
        what = getattr(handler, "__qualname__", repr(handler))
        raise TypeError(
            f"handler {what!r}: cannot resolve the annotation {ann!r} of its parameter "
            f"{param.name!r} ({type(exc).__name__}: {exc}); import the type at module level, "
            "not under TYPE_CHECKING or inside a function"
        ) from None


def _declaring_locals() -> dict[str, Any]:
    """The local names of the code declaring the subscriber (the first frame outside
    interlink.messaging): a type imported inside that function is found there. Empty where
    the interpreter keeps no frames (``inspect.currentframe()`` is None)."""
    frame = inspect.currentframe()
    try:
        while frame is not None and str(frame.f_globals.get("__name__", "")).startswith(
            "interlink.messaging"
        ):
            frame = frame.f_back
        return dict(frame.f_locals) if frame is not None else {}
    finally:
        del frame  # no reference cycle through the frame


# the body as it came: read in C, once per message
_PAYLOAD: Callable[[Envelope], bytes] = operator.attrgetter("payload")


def decoder_for(handler: Callable[..., Any]) -> tuple[Callable[[Envelope], Any], Any]:
    """How to turn an envelope into the handler's argument, from its first parameter's
    annotation: a pydantic model, ``bytes`` (or none), ``str``, ``Envelope``, or any type
    pydantic can validate JSON into."""
    params = list(inspect.signature(handler).parameters.values())
    if not params:
        raise ValueError(f"'handler' must take the message as its first argument: {handler!r}")
    ann = _resolved(handler, params[0])
    if ann in (inspect.Parameter.empty, bytes, Any):
        return _PAYLOAD, bytes
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
