"""The message envelope and its wire format: what a message is, and how it is read (pure core).

Every message on every backend is one self-describing frame, so a backend only moves bytes and
any interlink process can read any message, whatever broker carried it::

    b"ilm1" | header length (4 bytes, big endian) | header (JSON) | payload (the user's bytes)

The header is a small JSON object (id, type, key, time, attempt, correlation id, headers); the
payload stays raw bytes, so a 1 KiB message is never base64-encoded or copied through a JSON
parser. Bytes that are not such a frame still decode, to an ``Envelope`` whose ``error`` says
why: the consumer dead-letters it at once instead of crashing on it (a poison message).

This module is the public home of the format: the frame writer (``_frame``) and the delivery
decisions (``_decisions``: ack, retry after a delay, dead-letter, with the backoff asked of the
core ``Retry`` policy) live in modules of their own and are re-exported from here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from interlink.errors import InterlinkError
from interlink.messaging._decisions import (
    ACK,
    Decision,
    decide_failure,
    decide_poison,
    error_type_of,
)
from interlink.messaging._frame import MAGIC, frame, frame_parts, header_tail, plain_frame

__all__ = [
    "ACK",
    "MAGIC",
    "DeadLetter",
    "Decision",
    "Envelope",
    "EnvelopeError",
    "OutgoingMessage",
    "decide_failure",
    "decide_poison",
    "decode",
    "decode_dead_letter",
    "decode_or_poison",
    "encode",
    "encode_dead_letter",
    "error_type_of",
    "frame",
    "frame_parts",
    "header_tail",
    "plain_frame",
    "with_attempt",
]

_DLQ_MAGIC: Final = b"ild1"
_PREFIX: Final = 8  # magic + 4-byte header length
_EMPTY: Mapping[str, str] = {}
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class EnvelopeError(InterlinkError, ValueError):
    """Bytes that are not an interlink message frame (or a frame with a malformed header)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message as the consumer sees it: the payload plus what travels with it.

    ``headers`` holds the user's headers and the trace context (``traceparent``,
    ``tracestate``, ``baggage``). ``attempt`` is 1 when published; backends that count
    deliveries themselves report the count on the ``Delivery``, which is authoritative.
    ``error`` is set only for bytes that could not be decoded: then ``payload`` is those bytes.
    """

    id: str
    type: str
    payload: bytes
    key: str | None = None
    time: float = 0.0
    attempt: int = 1
    correlation_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


_FIELDS = ("id", "type", "payload", "key", "time", "attempt", "correlation_id", "headers", "error")
_new = object.__new__
_S_ID, _S_TYPE, _S_PAYLOAD, _S_KEY, _S_TIME, _S_ATTEMPT, _S_CID, _S_HEADERS, _S_ERROR = (
    Envelope.__dict__[name].__set__ for name in _FIELDS
)


def _envelope(  # noqa: PLR0917 - private, the decoder's hot path
    mid: str,
    type_name: str,
    payload: bytes,
    key: str | None,
    time: float,
    attempt: int,
    cid: str | None,
    headers: Mapping[str, str],
) -> Envelope:
    # A frozen dataclass's __init__ sets each field through object.__setattr__; the slots'
    # own setters do the same in a third of the time, on the consumer's hot path.
    env: Envelope = _new(Envelope)
    _S_ID(env, mid)
    _S_TYPE(env, type_name)
    _S_PAYLOAD(env, payload)
    _S_KEY(env, key)
    _S_TIME(env, time)
    _S_ATTEMPT(env, attempt)
    _S_CID(env, cid)
    _S_HEADERS(env, headers)
    _S_ERROR(env, None)
    return env


@dataclass(frozen=True, slots=True, init=False)
class OutgoingMessage:
    """One message of a ``publish_batch``: the frame plus what a backend may want natively
    (the key for ordering or partitioning, the id for broker-side deduplication, headers)."""

    data: bytes
    key: str | None
    headers: Mapping[str, str]
    message_id: str

    def __init__(
        self, data: bytes, key: str | None, headers: Mapping[str, str], message_id: str
    ) -> None:
        # what the generated __init__ does, through the slots' setters: one per message of a
        # batch, on the publisher's hot path
        _O_DATA(self, data)
        _O_KEY(self, key)
        _O_HEADERS(self, headers)
        _O_ID(self, message_id)


_O_DATA, _O_KEY, _O_HEADERS, _O_ID = (
    OutgoingMessage.__dict__[name].__set__ for name in ("data", "key", "headers", "message_id")
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A message that was given up on, as stored in ``<topic>.dlq``.

    ``data`` is the original frame, byte for byte, so a replay re-publishes exactly what was
    published (same id). ``id`` is the message id (the envelope's, or the backend's own for
    bytes that never decoded); ``dlq_replay`` and the CLI select dead letters by it.
    """

    id: str
    topic: str
    data: bytes
    reason: str
    error_type: str | None
    attempts: int
    group: str | None = None
    published_at: float | None = None
    dead_at: float = 0.0


# -- reading (and re-writing) the message frame ----------------------------------------------


def encode(envelope: Envelope) -> bytes:
    """The frame for ``envelope`` (``error`` is not encoded: a poison message is re-sent raw)."""
    tail = header_tail(
        type=envelope.type,
        time=envelope.time,
        key=envelope.key,
        attempt=envelope.attempt,
        correlation_id=envelope.correlation_id,
        headers=envelope.headers,
    )
    return frame(envelope.id, envelope.payload, tail)


def _header(data: bytes, magic: bytes) -> tuple[dict[str, Any], int]:
    if data[:4] != magic:
        raise EnvelopeError(f"not an interlink frame (starts with {bytes(data[:8])!r})")
    if len(data) < _PREFIX:
        raise EnvelopeError(f"truncated frame: {len(data)} bytes")
    end = _PREFIX + int.from_bytes(data[4:_PREFIX], "big")
    if end > len(data):
        raise EnvelopeError(f"truncated frame: header ends at {end} of {len(data)} bytes")
    raw = data[_PREFIX:end]
    header: Any = None
    if type(raw) is bytes:
        # What ``json.loads`` ends up doing for a UTF-8 object with nothing around it, minus
        # its encoding detection and whitespace handling; anything else takes that path.
        try:
            text = raw.decode()
            header, stop = _scan(text, 0)
            if stop != len(text):
                header = None
        except (StopIteration, ValueError):
            header = None
    if type(header) is not dict:
        try:
            header = json.loads(raw)
        except ValueError as exc:
            raise EnvelopeError(f"malformed header: {exc}") from None
        if not isinstance(header, dict):
            raise EnvelopeError("malformed header: not a JSON object")
    return header, end


def _str(header: Mapping[str, Any], name: str, default: str | None = None) -> str | None:
    value = header.get(name, default)
    if value is not None and not isinstance(value, str):
        raise EnvelopeError(f"malformed header: {name!r} must be a string: {value!r}")
    return value


# The header as ``header_tail`` writes it without user headers, its strings free of escapes and
# control characters: what nearly every message carries. One match reads it in a fraction of
# what the JSON scanner, the dict it builds and the checks after it cost, and gives what they
# would give (a test pins that); anything else takes that general path.
_STR = rb'"([^"\\\x00-\x1f]*)"'  # a JSON string with no escapes and no control characters
_NUMBER = rb"((?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"  # a JSON number, not negative
_PLAIN = re.compile(
    rb'\{"id":"([^"\\\x00-\x1f]+)","type":%s,"time":%s(?:,"key":%s)?(?:,"attempt":([1-9][0-9]*))?'
    rb'(?:,"cid":%s)?\}' % (_STR, _NUMBER, _STR, _STR)
)


def decode(data: bytes) -> Envelope:
    """The envelope in ``data``; raises ``EnvelopeError`` when it is not a valid frame."""
    if type(data) is bytes and data[:4] == MAGIC:
        end = _PREFIX + int.from_bytes(data[4:_PREFIX], "big")
        match = _PLAIN.fullmatch(data, _PREFIX, end) if end <= len(data) else None
        if match is not None:
            mid, type_name, time, key, attempt, cid = match.groups()
            try:
                return _envelope(
                    mid.decode(),
                    type_name.decode(),
                    data[end:],
                    None if key is None else key.decode(),
                    float(time),
                    1 if attempt is None else int(attempt),
                    None if cid is None else cid.decode(),
                    _EMPTY,
                )
            except UnicodeDecodeError:
                pass  # not UTF-8: the general path says so
    return _decode_json(data)


def _decode_json(data: bytes) -> Envelope:
    header, end = _header(data, MAGIC)
    get = header.get
    mid, type_name, key, cid = get("id"), get("type"), get("key"), get("cid")
    time, attempt, headers = get("time", 0.0), get("attempt", 1), get("headers", _EMPTY)
    if not (  # the frames interlink writes; anything else is checked field by field
        type(mid) is str
        and mid
        and type(type_name) is str
        and (key is None or type(key) is str)
        and (cid is None or type(cid) is str)
        and type(time) is float
        and type(attempt) is int
        and attempt >= 1
        and (headers is _EMPTY or (type(headers) is dict and _all_str(headers)))
    ):
        return _checked(header, data, end)
    return _envelope(mid, type_name, bytes(data[end:]), key, time, attempt, cid, headers)


def _all_str(headers: dict[str, Any]) -> bool:
    return all(type(value) is str for value in headers.values())


def _checked(header: dict[str, Any], data: bytes, end: int) -> Envelope:
    mid = _str(header, "id")
    if not mid:
        raise EnvelopeError("malformed header: no 'id'")
    time = header.get("time", 0.0)
    attempt = header.get("attempt", 1)
    headers = header.get("headers", _EMPTY)
    if not isinstance(time, int | float) or isinstance(time, bool):
        raise EnvelopeError(f"malformed header: 'time' must be a number: {time!r}")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise EnvelopeError(f"malformed header: 'attempt' must be an integer >= 1: {attempt!r}")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise EnvelopeError("malformed header: 'headers' must map strings to strings")
    type_name = _str(header, "type")
    return Envelope(
        id=mid,
        type="bytes" if type_name is None else type_name,
        payload=bytes(data[end:]),
        key=_str(header, "key"),
        time=float(time),
        attempt=attempt,
        correlation_id=_str(header, "cid"),
        headers=headers,
    )


def decode_or_poison(data: bytes, fallback_id: str = "") -> Envelope:
    """Like ``decode``, but never raises: bytes that do not decode come back as an envelope
    with ``error`` set, ``payload`` the raw bytes and ``id`` the backend's ``fallback_id``.

    Backends build every ``Delivery.envelope`` with this, so a poison message reaches the
    consumer (which dead-letters it) instead of breaking the backend's fetch loop.
    """
    try:
        return decode(data)
    except EnvelopeError as exc:
        return Envelope(id=fallback_id, type="", payload=bytes(data), error=str(exc))


def with_attempt(data: bytes, attempt: int) -> bytes:
    """``data`` re-framed with ``attempt`` (for backends that redeliver by re-publishing);
    bytes that do not decode are returned unchanged."""
    try:
        envelope = decode(data)
    except EnvelopeError:
        return data
    return encode(replace(envelope, attempt=attempt))


# -- dead letters --------------------------------------------------------------------------


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A self-describing record for backends that keep ``<topic>.dlq`` as an ordinary
    stream or queue: the facts in a JSON header, the original frame untouched after it."""
    header = {
        "id": letter.id,
        "topic": letter.topic,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "attempts": letter.attempts,
        "group": letter.group,
        "published_at": letter.published_at,
        "dead_at": letter.dead_at,
    }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join((_DLQ_MAGIC, len(head).to_bytes(4, "big"), head, letter.data))


def decode_dead_letter(data: bytes) -> DeadLetter:
    """The record written by ``encode_dead_letter``; raises ``EnvelopeError`` otherwise."""
    header, end = _header(data, _DLQ_MAGIC)
    try:
        return DeadLetter(
            id=str(header["id"]),
            topic=str(header["topic"]),
            data=bytes(data[end:]),
            reason=str(header.get("reason", "")),
            error_type=header.get("error_type"),
            attempts=int(header.get("attempts", 0)),
            group=header.get("group"),
            published_at=header.get("published_at"),
            dead_at=float(header.get("dead_at", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed dead letter: {exc!r}") from None
