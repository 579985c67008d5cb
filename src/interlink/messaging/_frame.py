"""Writing the message frame: the header JSON by hand, then the frame around it (pure core).

A module of its own because writing is the publisher's hot path and shares nothing with reading
but ``MAGIC``; ``envelope`` re-exports every name. The header is written field by field, in the
order and form of ``json.dumps(header, separators=(",", ":"), ensure_ascii=False)`` (a test pins
the equality): a publish then costs a few string joins, not a trip through the JSON encoder, and
a batch shares one ``header_tail`` between all its messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from math import isfinite
from typing import Any, Final

__all__ = ["MAGIC", "frame", "frame_parts", "header_tail", "plain_frame"]

#: The first bytes of every interlink message frame (and ``b"ild1"`` for a dead letter).
MAGIC: Final = b"ilm1"
_PREFIX_BYTES: Final = MAGIC
_ID_OPEN: Final = b'{"id":"'
_jstr: Callable[[str], str] = encode_basestring  # JSON string literal, non-ASCII kept


def _json(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return _jstr(value)
    if kind is float and isfinite(value):
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def header_tail(
    *,
    type: str,
    time: float,
    key: str | None = None,
    attempt: int = 1,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The frame header after the id (``,"type":...}``): what ``frame`` puts behind each id.

    Messages of one batch share everything but the id and the payload, so a batch builds this
    once and each message costs one ``frame`` call.
    """
    if key is None and attempt == 1 and correlation_id is None and not headers:
        return f',"type":{_jstr(type)},"time":{_json(time)}}}'.encode()  # the usual header
    parts = [',"type":', _jstr(type), ',"time":', _json(time)]
    if key is not None:
        parts += ',"key":', _jstr(key)
    if attempt != 1:
        parts += ',"attempt":', _json(attempt)
    if correlation_id is not None:
        parts += ',"cid":', _jstr(correlation_id)
    if headers:
        parts += ',"headers":', _json(dict(headers))
    parts.append("}")
    return "".join(parts).encode()


def frame(message_id: str, payload: bytes, tail: bytes) -> bytes:
    """The frame of message ``message_id`` with ``payload`` and the rest of the header
    ``tail`` (from ``header_tail``)."""
    head = b'{"id":' + _jstr(message_id).encode() + tail
    return b"".join((MAGIC, len(head).to_bytes(4, "big"), head, payload))


def plain_frame(message_id: str, type_name: str, time: float, payload: bytes) -> bytes:
    """``frame(message_id, payload, header_tail(type=type_name, time=time))`` in one step: a
    message without key, attempt, correlation id or headers, as most are published."""
    stamp = float.__repr__(time) if type(time) is float and isfinite(time) else _json(time)
    head = f'{{"id":{_jstr(message_id)},"type":{_jstr(type_name)},"time":{stamp}}}'.encode()
    return b"".join((MAGIC, len(head).to_bytes(4, "big"), head, payload))


def frame_parts(tail: bytes, id_length: int) -> tuple[bytes, bytes]:
    """``(start, end)`` such that ``start + id + end + payload`` is the frame, for ids of
    ``id_length`` ASCII characters that need no JSON escaping (the ids a broker makes): a
    batch then joins four byte strings per message."""
    start = _PREFIX_BYTES + (len(_ID_OPEN) + id_length + 1 + len(tail)).to_bytes(4, "big")
    return start + _ID_OPEN, b'"' + tail
