"""The message envelope and its wire format: CloudEvents 1.0 in each broker's native headers
(pure core).

On the wire the body of a message is its payload, exactly: the model's JSON, or the bytes as
given. Everything else travels in the broker's own headers, named as the CloudEvents 1.0
*binary content mode* binding of that protocol names them, so a service that does not run
interlink reads the body as plain JSON and the metadata from headers, and publishes to
interlink the same way:

=====================================  ===========================  ===========================
protocol                               attribute ``id`` is named    datacontenttype is named
=====================================  ===========================  ===========================
NATS (headers)                         ``ce-id``                    ``content-type`` header
AMQP 0-9-1 (application properties)    ``cloudEvents:id``           the ``content-type`` property
Redis Streams, SQLite, memory (fields)  ``ce_id``                    ``content-type`` field
=====================================  ===========================  ===========================

and likewise ``source``, ``specversion`` (``1.0``), ``type`` (the model's class name, ``bytes``
or ``str``), ``time`` (RFC 3339), and interlink's extensions ``partitionkey`` (the message key),
``correlationid``, ``attempt`` (the delivery a re-published copy starts at), ``traceparent``
and ``tracestate`` (W3C trace context). On Redis the body is the entry's ``data`` field.

``Binding`` holds one protocol's naming; ``headers_for`` writes the headers of a message and
``read`` reads any message back into an ``Envelope``. ``read`` accepts three shapes: that binary
mode; CloudEvents *structured* mode (content type ``application/cloudevents+json``, the
attributes and ``data`` or ``data_base64`` in a JSON body); and a bare payload with no
CloudEvents headers at all (the id is the broker's own message id, the type empty: the
subscriber's model says what it is). Headers that are not CloudEvents attributes are the user's
and come back in ``Envelope.headers``. ``read`` never raises: headers it cannot read come back
as an envelope whose ``error`` says why, and the consumer dead-letters it (a poison message),
payload kept byte for byte.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import gmtime
from typing import Any, Final

from interlink.errors import InterlinkError
from interlink.messaging._decisions import (
    ACK,
    Decision,
    decide_failure,
    decide_poison,
    error_type_of,
)

__all__ = [
    "ACK",
    "AMQP",
    "FIELDS",
    "NATS",
    "SPECVERSION",
    "STRUCTURED",
    "Binding",
    "DeadLetter",
    "Decision",
    "Envelope",
    "EnvelopeError",
    "OutgoingMessage",
    "decide_failure",
    "decide_poison",
    "decode_dead_letter",
    "encode_dead_letter",
    "error_type_of",
    "headers_for",
    "letter_for",
    "read",
    "reserved",
]

#: The CloudEvents version interlink writes (and the only one it reads).
SPECVERSION: Final = "1.0"
#: The content type of a CloudEvent in structured mode (JSON event format).
STRUCTURED: Final = "application/cloudevents+json"
#: The datacontenttype of each kind of payload interlink publishes.
CONTENT_TYPES: Final = {
    "bytes": "application/octet-stream",
    "str": "text/plain; charset=utf-8",
}
_JSON: Final = "application/json"
_DEFAULT_SOURCE: Final = "/interlink"
_DLQ_MAGIC: Final = b"ild1"
_PREFIX: Final = 8  # magic + 4-byte header length
_EMPTY: Mapping[str, str] = {}


class EnvelopeError(InterlinkError, ValueError):
    """Bytes or headers that are not a readable message (a malformed CloudEvent, a malformed
    dead-letter record), or user headers that use a reserved name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message as the consumer sees it: the payload plus what travels with it.

    ``headers`` holds the user's headers and the trace context (``traceparent``,
    ``tracestate``, ``baggage``). ``attempt`` is 1 when published; backends that count
    deliveries themselves report the count on the ``Delivery``, which is authoritative.
    ``type`` is empty for a bare payload (no CloudEvents headers). ``error`` is set only for a
    message whose headers could not be read: then ``payload`` is its body.
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
    source: str = ""
    content_type: str | None = None


_FIELDS = ("id", "type", "payload", "key", "time", "attempt", "correlation_id", "headers", "error")
_new = object.__new__
_S_ID, _S_TYPE, _S_PAYLOAD, _S_KEY, _S_TIME, _S_ATTEMPT, _S_CID, _S_HEADERS, _S_ERROR = (
    Envelope.__dict__[name].__set__ for name in _FIELDS
)
_S_SOURCE = Envelope.__dict__["source"].__set__
_S_CTYPE = Envelope.__dict__["content_type"].__set__


@dataclass(frozen=True, slots=True, init=False)
class OutgoingMessage:
    """One message as a backend publishes it: the payload (``data``), the key for ordering or
    partitioning, the complete native headers (``headers_for``) and the id.

    ``shared`` is, in a batch, what its headers have in common with others of the batch:
    all of them but the id, one mapping object for every message of the same type and key
    (a backend can encode it once per object); None when the message was published alone.
    """

    data: bytes
    key: str | None
    headers: Mapping[str, str]
    message_id: str
    shared: Mapping[str, str] | None

    def __init__(
        self,
        data: bytes,
        key: str | None,
        headers: Mapping[str, str],
        message_id: str,
        shared: Mapping[str, str] | None = None,
    ) -> None:
        # what the generated __init__ does, through the slots' setters: one per message of a
        # batch, on the publisher's hot path
        _O_DATA(self, data)
        _O_KEY(self, key)
        _O_HEADERS(self, headers)
        _O_ID(self, message_id)
        _O_SHARED(self, shared)


_O_DATA, _O_KEY, _O_HEADERS, _O_ID, _O_SHARED = (
    OutgoingMessage.__dict__[name].__set__
    for name in ("data", "key", "headers", "message_id", "shared")
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A message that was given up on, as stored in ``<topic>.dlq``.

    ``data`` is the original body and ``headers`` its native headers, byte for byte, so a
    replay re-publishes exactly what was published (same id). ``id`` is the message id (the
    CloudEvent's, or the broker's own for a bare payload); ``dlq_replay`` and the CLI select
    dead letters by it.
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
    headers: Mapping[str, str] = field(default_factory=dict)


# -- bindings --------------------------------------------------------------------------------


class Binding:
    """How one protocol names the CloudEvents attributes in its native headers: ``prefix``
    before each attribute name, ``content_type`` the header of ``datacontenttype`` (None when
    the protocol has a property of its own for it, as AMQP does: the backend passes it)."""

    __slots__ = (
        "attempt",
        "cid",
        "content_type",
        "id",
        "key",
        "known",
        "native",
        "prefix",
        "source",
        "spec",
        "time",
        "traceparent",
        "tracestate",
        "type",
    )

    def __init__(
        self, prefix: str, content_type: str | None, native: frozenset[str] = frozenset()
    ) -> None:
        self.prefix = prefix
        self.content_type = content_type
        # headers the broker or the backend itself sets: neither attributes nor the user's
        self.native = native | ({content_type} if content_type else set())
        self.id = prefix + "id"
        self.source = prefix + "source"
        self.spec = prefix + "specversion"
        self.type = prefix + "type"
        self.time = prefix + "time"
        self.key = prefix + "partitionkey"
        self.cid = prefix + "correlationid"
        self.attempt = prefix + "attempt"
        self.traceparent = prefix + "traceparent"
        self.tracestate = prefix + "tracestate"
        # every name a reader takes as an attribute: a message carrying only these (the
        # usual case) has no user headers to pick out one by one
        self.known = self.native | {
            self.id, self.source, self.spec, self.type, self.time, self.key, self.cid,
            self.attempt, self.traceparent, self.tracestate, prefix + "datacontenttype",
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"Binding({self.prefix!r}, {self.content_type!r})"


#: NATS (CloudEvents NATS protocol binding): ``ce-`` headers, ``content-type``.
NATS: Final = Binding("ce-", "content-type", frozenset({"Nats-Msg-Id"}))
#: AMQP (CloudEvents AMQP protocol binding): ``cloudEvents:`` application properties; the
#: content type is the message's own ``content-type`` property (the backend moves it there
#: from ``content-type`` in the headers it is given, and back when it receives).
AMQP: Final = Binding("cloudEvents:", "content-type", frozenset({"x-delivery-count", "x-death"}))
#: Redis Streams and the SQLite and memory brokers: ``ce_`` fields (as the Kafka binding
#: names its headers), ``content-type``.
FIELDS: Final = Binding("ce_", "content-type", frozenset({"data"}))

# Name prefixes no user header may use (any binding's, any case), and the other names
# interlink's bindings own.
_RESERVED_PREFIXES: Final = ("ce-", "ce_", "cloudevents:", "cloudevents_")
_RESERVED_NAMES: Final = frozenset({"content-type", "data", "nats-msg-id"})


def reserved(name: str) -> bool:
    """Whether a header name is interlink's (a CloudEvents attribute of any binding, the
    content type, Redis's ``data`` field, NATS's ``Nats-Msg-Id``): users may not set it."""
    lowered = name.lower()
    return lowered.startswith(_RESERVED_PREFIXES) or lowered in _RESERVED_NAMES


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise ``EnvelopeError`` for user headers that are not strings or use a reserved name."""
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise EnvelopeError(f"'headers' must map strings to strings: {name!r}: {value!r}")
        if reserved(name):
            raise EnvelopeError(
                f"'headers' must not use a reserved name (CloudEvents attributes, "
                f"content-type, data, Nats-Msg-Id): {name!r}"
            )


# -- time ------------------------------------------------------------------------------------

_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 in UTC with microseconds
    (``2026-12-07T14:02:03.123456Z``); the date part is formatted once a second."""
    whole = int(seconds)
    if whole != _second[0]:
        t = gmtime(whole)
        _second[1] = "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]  # noqa: UP031 - hot path
        _second[0] = whole
    micros = round((seconds - whole) * 1e6)
    if micros >= 1_000_000:  # rounding reached the next second
        return rfc3339(whole + 1.0)
    return f"{_second[1]}.{micros:06d}Z"


_parsed: list[tuple[str, float | None]] = [("", None)]  # the last text parsed, its value


def parse_time(text: str) -> float | None:
    """RFC 3339 text as seconds since the epoch; None if it is not such a time (the last
    text is remembered: the messages of one batch share their time)."""
    last, value = _parsed[0]  # one tuple: threads never see a text with another's value
    if text == last and text:
        return value
    value = _parse_time(text)
    _parsed[0] = (text, value)
    return value


def _parse_time(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# -- writing ---------------------------------------------------------------------------------


def headers_for(
    binding: Binding,
    *,
    message_id: str,
    type: str,
    time: float,
    source: str = _DEFAULT_SOURCE,
    content_type: str | None = None,
    key: str | None = None,
    correlation_id: str | None = None,
    attempt: int = 1,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The native headers of one message in binary content mode: the CloudEvents attributes
    named as ``binding`` names them, then the user's ``headers`` (trace context mapped to
    the ``traceparent``/``tracestate`` extensions). ``content_type`` defaults from ``type``:
    ``bytes`` and ``str`` payloads as such, anything else as JSON."""
    out = {
        binding.spec: SPECVERSION,
        binding.id: message_id,
        binding.source: source,
        binding.type: type,
        binding.time: rfc3339(time),
    }
    if binding.content_type is not None:
        out[binding.content_type] = content_type or CONTENT_TYPES.get(type, _JSON)
    if key is not None:
        out[binding.key] = key
    if correlation_id is not None:
        out[binding.cid] = correlation_id
    if attempt != 1:
        out[binding.attempt] = str(attempt)
    if headers:
        for name, value in headers.items():
            if name == "traceparent":
                out[binding.traceparent] = value
            elif name == "tracestate":
                out[binding.tracestate] = value
            else:
                out[name] = value
    return out


def with_attempt(binding: Binding, headers: Mapping[str, str], attempt: int) -> dict[str, str]:
    """``headers`` with the ``attempt`` extension set (for backends that redeliver by
    re-publishing a copy)."""
    out = dict(headers)
    out[binding.attempt] = str(attempt)
    return out


def with_id(binding: Binding, headers: Mapping[str, str], message_id: str) -> dict[str, str]:
    """``headers`` naming ``message_id`` as the id if they name none (a bare payload
    replayed from the DLQ keeps the id it was dead-lettered under)."""
    if binding.id in headers:
        return dict(headers)
    return {**headers, binding.id: message_id}


# -- reading ---------------------------------------------------------------------------------


def read(
    binding: Binding,
    payload: bytes,
    headers: Mapping[str, str] | None,
    *,
    fallback_id: str,
    content_type: str | None = None,
) -> Envelope:
    """The envelope of a message with body ``payload`` and native ``headers`` (binary mode,
    structured mode or a bare payload: see the module docstring). ``fallback_id`` is the
    broker's own id, for a message that names none; ``content_type`` the protocol's own
    content type property, where it has one. Never raises: ``error`` says what was wrong."""
    if not headers:
        if content_type is not None and content_type.startswith(STRUCTURED):
            return _structured(binding, payload, _EMPTY, fallback_id)
        return _bare(payload, _EMPTY, fallback_id, content_type)
    mid = headers.get(binding.id)
    if mid is None:
        if content_type is None and binding.content_type is not None:
            content_type = headers.get(binding.content_type)
        if content_type is not None and content_type.startswith(STRUCTURED):
            return _structured(binding, payload, headers, fallback_id)
        return _bare(payload, headers, fallback_id, content_type)
    return _binary(binding, payload, headers, mid, fallback_id, content_type)


def _make(  # noqa: PLR0917 - private, the reader's hot path
    mid: str,
    type_name: str,
    payload: bytes,
    key: str | None,
    time: float,
    attempt: int,
    cid: str | None,
    headers: Mapping[str, str],
    source: str,
    content_type: str | None,
    error: str | None = None,
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
    _S_ERROR(env, error)
    _S_SOURCE(env, source)
    _S_CTYPE(env, content_type)
    return env


def _bare(
    payload: bytes, headers: Mapping[str, str], fallback_id: str, content_type: str | None
) -> Envelope:
    return _make(fallback_id, "", payload, None, 0.0, 1, None, headers, "", content_type)


def _attempt_of(text: str | None) -> int:
    # A foreign or garbled value is ignored (the backend's own count still holds).
    if text is not None and text.isdigit():
        value = int(text)
        if value >= 1:
            return value
    return 1


def _binary(  # noqa: PLR0917
    binding: Binding,
    payload: bytes,
    headers: Mapping[str, str],
    mid: str,
    fallback_id: str,
    content_type: str | None,
) -> Envelope:
    prefix, native = binding.prefix, binding.native
    get = headers.get
    stamp = get(binding.time)
    time = 0.0
    if stamp is not None:
        parsed = parse_time(stamp)
        if parsed is None:
            return _poison(payload, headers, mid or fallback_id, f"malformed {binding.time!r}")
        time = parsed
    if content_type is None and binding.content_type is not None:
        content_type = get(binding.content_type)
    user: dict[str, str] | Mapping[str, str] = _EMPTY
    if not binding.known.issuperset(headers):
        for name in headers:  # the user's headers: whatever is not an attribute we read
            if name.startswith(prefix) or name in native:
                continue
            if user is _EMPTY:
                user = {}
            user[name] = headers[name]  # type: ignore[index]
    counted = get(binding.attempt)  # absent on a first delivery: nothing to parse
    attempt = 1 if counted is None else _attempt_of(counted)
    parent = get(binding.traceparent)
    if parent is not None:
        user = dict(user)
        user["traceparent"] = parent
        state = get(binding.tracestate)
        if state is not None:
            user["tracestate"] = state
    return _make(
        mid or fallback_id,
        get(binding.type, ""),
        payload,
        get(binding.key),
        time,
        attempt,
        get(binding.cid),
        user,
        get(binding.source, ""),
        content_type,
    )


def _poison(payload: bytes, headers: Mapping[str, str], mid: str, error: str) -> Envelope:
    return _make(mid, "", payload, None, 0.0, 1, None, headers, "", None, error)


def _structured(
    binding: Binding, payload: bytes, headers: Mapping[str, str], fallback_id: str
) -> Envelope:
    try:
        event = json.loads(payload)
    except ValueError as exc:
        return _poison(payload, headers, fallback_id, f"malformed structured CloudEvent: {exc}")
    if not isinstance(event, dict):
        return _poison(payload, headers, fallback_id, "malformed structured CloudEvent")
    text: dict[str, str] = {}
    for name, value in event.items():
        if name in ("data", "data_base64"):
            continue
        if not isinstance(value, str | int | bool):  # CloudEvents attributes are scalars
            return _poison(
                payload, headers, fallback_id, f"malformed structured CloudEvent: {name!r}"
            )
        text[name] = str(value).lower() if isinstance(value, bool) else str(value)
    if "data_base64" in event:
        try:
            data = base64.b64decode(event["data_base64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            return _poison(payload, headers, fallback_id, "malformed 'data_base64'")
    elif "data" not in event:
        data = b""
    elif isinstance(event["data"], str) and not str(text.get("datacontenttype", _JSON)).endswith(
        "json"
    ):
        data = event["data"].encode()
    else:
        data = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False).encode()
    attributes = {binding.prefix + name: value for name, value in text.items()}
    if binding.content_type is not None and "datacontenttype" in text:
        attributes[binding.content_type] = text["datacontenttype"]
    merged = {**headers, **attributes}
    return _binary(
        binding, data, merged, text.get("id", ""), fallback_id, text.get("datacontenttype")
    )


# -- dead letters --------------------------------------------------------------------------


def letter_for(
    envelope: Envelope,
    *,
    topic: str,
    group: str | None,
    body: bytes,
    headers: Mapping[str, str],
    reason: str,
    error_type: str | None,
    attempts: int,
    dead_at: float,
    binding: Binding,
    drop: frozenset[str] = frozenset(),
) -> DeadLetter:
    """The dead letter of a delivery: its body and headers as published (without the
    ``attempt`` a retry copy carried, so a replay starts again at 1, nor the ``drop``ped
    names a backend sets itself), the reason and the counts."""
    skip = drop | {binding.attempt}
    return DeadLetter(
        id=envelope.id,
        topic=topic,
        data=body,
        reason=reason,
        error_type=error_type,
        attempts=attempts,
        group=group,
        published_at=envelope.time if envelope.error is None else None,
        dead_at=dead_at,
        headers={name: value for name, value in headers.items() if name not in skip},
    )


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """A self-describing record for backends that keep ``<topic>.dlq`` as an ordinary
    stream or queue: the facts in a JSON header, the original body untouched after it."""
    header = {
        "id": letter.id,
        "topic": letter.topic,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "attempts": letter.attempts,
        "group": letter.group,
        "published_at": letter.published_at,
        "dead_at": letter.dead_at,
        "headers": dict(letter.headers),
    }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join((_DLQ_MAGIC, len(head).to_bytes(4, "big"), head, letter.data))


def decode_dead_letter(data: bytes) -> DeadLetter:
    """The record written by ``encode_dead_letter``; raises ``EnvelopeError`` otherwise."""
    if data[:4] != _DLQ_MAGIC:
        raise EnvelopeError(f"not a dead-letter record (starts with {bytes(data[:8])!r})")
    end = _PREFIX + int.from_bytes(data[4:_PREFIX], "big")
    if len(data) < _PREFIX or end > len(data):
        raise EnvelopeError(f"truncated dead-letter record: {len(data)} bytes")
    try:
        header = json.loads(data[_PREFIX:end])
        headers = header.get("headers") or {}
        if not isinstance(headers, dict):
            raise TypeError("'headers' is not an object")
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
            headers={str(k): str(v) for k, v in headers.items()},
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise EnvelopeError(f"malformed dead letter: {exc!r}") from None
