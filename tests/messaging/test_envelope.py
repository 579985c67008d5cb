"""The envelope's wire format and the delivery decisions (pure: no broker, no time)."""

from __future__ import annotations

import json
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink import Retry, RetryBudget
from interlink.errors import BudgetExhausted
from interlink.messaging.envelope import (
    ACK,
    MAGIC,
    DeadLetter,
    Decision,
    Envelope,
    EnvelopeError,
    _decode_json,  # the general path
    decide_failure,
    decide_poison,
    decode,
    decode_dead_letter,
    decode_or_poison,
    encode,
    encode_dead_letter,
    error_type_of,
    frame,
    frame_parts,
    header_tail,
    plain_frame,
    with_attempt,
)

texts = st.text(max_size=30)
envelopes = st.builds(
    Envelope,
    id=st.text(min_size=1, max_size=40),
    type=texts,
    payload=st.binary(max_size=300),
    key=st.none() | texts,
    time=st.floats(min_value=0, max_value=4e9),
    attempt=st.integers(min_value=1, max_value=1000),
    correlation_id=st.none() | texts,
    headers=st.dictionaries(texts, texts, max_size=4),
)


@given(envelopes)
def test_encode_decode_roundtrip(envelope: Envelope) -> None:
    """Every envelope survives the wire unchanged, payload bytes included."""
    assert decode(encode(envelope)) == envelope


def _reference_frame(envelope: Envelope) -> bytes:
    """The frame as ``json.dumps`` writes its header (what the hand-written header matches)."""
    header: dict[str, object] = {"id": envelope.id, "type": envelope.type, "time": envelope.time}
    if envelope.key is not None:
        header["key"] = envelope.key
    if envelope.attempt != 1:
        header["attempt"] = envelope.attempt
    if envelope.correlation_id is not None:
        header["cid"] = envelope.correlation_id
    if envelope.headers:
        header["headers"] = dict(envelope.headers)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return MAGIC + len(head).to_bytes(4, "big") + head + envelope.payload


@given(envelopes)
def test_encode_writes_the_header_json_dumps_would(envelope: Envelope) -> None:
    """The header written field by field is byte for byte the JSON encoder's."""
    assert encode(envelope) == _reference_frame(envelope)


@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), envelopes)
def test_frame_parts_around_a_plain_id_make_the_frame(mid: str, envelope: Envelope) -> None:
    """start + id + end + payload, the batch path, is the frame of that id."""
    tail = header_tail(
        type=envelope.type,
        time=envelope.time,
        key=envelope.key,
        attempt=envelope.attempt,
        correlation_id=envelope.correlation_id,
        headers=envelope.headers,
    )
    start, end = frame_parts(tail, len(mid))
    built = start + mid.encode() + end + envelope.payload
    assert built == frame(mid, envelope.payload, tail)
    assert decode(built).id == mid


@given(
    st.text(min_size=1, max_size=40),
    texts,
    st.floats(min_value=0, max_value=4e9) | st.integers(0, 2**40) | st.just(float("nan")),
    st.binary(max_size=50),
)
def test_plain_frame_is_the_frame_of_the_usual_header(
    mid: str, type_name: str, time: float, payload: bytes
) -> None:
    """The one-step frame of a publish without key, correlation id or headers is the frame
    ``header_tail`` and ``frame`` build."""
    assert plain_frame(mid, type_name, time, payload) == frame(
        mid, payload, header_tail(type=type_name, time=time)
    )


@pytest.mark.parametrize(
    "head",
    [
        b' {"id":"a","time":1} ',  # whitespace around the object
        '{"id":"\u00e9","type":"T"}'.encode("utf-16"),  # what json.loads detects as UTF-16
        b'{"id":"a","type":null,"time":2}',  # an int time, a null type
    ],
)
def test_headers_json_loads_accepts_still_decode(head: bytes) -> None:
    """Headers outside the fast path (odd whitespace, encodings, types) decode as before."""
    envelope = decode(MAGIC + len(head).to_bytes(4, "big") + head + b"p")
    expected = json.loads(head)
    assert envelope.id == expected["id"]
    assert envelope.type == (expected.get("type") or "bytes")
    assert envelope.time == float(expected.get("time", 0.0))
    assert envelope.payload == b"p"


plain_texts = st.text(alphabet=st.characters(codec="ascii", exclude_characters='"\\'), max_size=12)


@given(
    st.builds(
        Envelope,
        id=st.text(min_size=1, max_size=40) | st.text(alphabet="0123456789abcdef", min_size=32),
        type=texts | plain_texts,
        payload=st.binary(max_size=50),
        key=st.none() | texts | plain_texts,
        time=st.floats(min_value=0, max_value=4e9) | st.sampled_from([0.0, 1e-7, 1e21]),
        attempt=st.integers(min_value=1, max_value=1000),
        correlation_id=st.none() | texts | plain_texts,
        headers=st.just({}) | st.dictionaries(texts, texts, max_size=2),
    )
)
def test_the_plain_header_match_decodes_as_the_json_path(envelope: Envelope) -> None:
    """The one-match reading of the usual header gives what the JSON scanner gives."""
    data = encode(envelope)
    assert decode(data) == _decode_json(data) == envelope


@pytest.mark.parametrize(
    "head",
    [
        b'{"id":"a","type":"T","time":5}',  # an int time
        b'{"id":"a","type":"T","time":1e5,"attempt":1}',  # an exponent, attempt 1 written
        b'{"id":"a","type":"","time":0,"key":"","cid":""}',  # empty strings
        b'{"id":"a","type":"T","time":1.5,"cid":"c","key":"k"}',  # fields out of order
        b'{"id":"a","type":"T","time":-1.5}',  # a negative time
        b'{"id":"\xc3\xa9","type":"T","time":1.0}',  # UTF-8 in a string
    ],
)
def test_headers_near_the_plain_form_decode_as_the_json_path(head: bytes) -> None:
    """Headers the match reads, and neighbours it leaves to the JSON path, agree."""
    data = MAGIC + len(head).to_bytes(4, "big") + head + b"p"
    assert decode(data) == _decode_json(data)


@pytest.mark.parametrize(
    "head",
    [
        b'{"id":"\xff","type":"T","time":1.0}',  # not UTF-8
        b'{"id":"a\x01","type":"T","time":1.0}',  # a control character in a string
        b'{"id":"","type":"T","time":1.0}',  # an empty id
    ],
)
def test_headers_the_json_path_refuses_are_still_refused(head: bytes) -> None:
    """What the JSON path rejects, decode rejects (the match does not let it through)."""
    data = MAGIC + len(head).to_bytes(4, "big") + head
    with pytest.raises(EnvelopeError):
        _decode_json(data)
    with pytest.raises(EnvelopeError):
        decode(data)


@given(st.binary(max_size=200))
def test_decode_or_poison_never_raises(data: bytes) -> None:
    """Arbitrary bytes decode to a poison envelope carrying them, never to an exception."""
    envelope = decode_or_poison(data, "fallback")
    if envelope.error is not None:
        assert envelope.payload == data
        assert envelope.id == "fallback"


def test_frame_starts_with_magic_and_keeps_payload_raw() -> None:
    """The payload follows the header byte for byte (no base64, no JSON escaping)."""
    frame = encode(Envelope(id="a", type="bytes", payload=b"\x00\xff" * 10))
    assert frame.startswith(MAGIC)
    assert frame.endswith(b"\x00\xff" * 10)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello", "not an interlink frame"),
        (MAGIC + b"\x00\x00", "truncated frame"),
        (MAGIC + (50).to_bytes(4, "big") + b"{}", "truncated frame: header ends at 58"),
        (MAGIC + (3).to_bytes(4, "big") + b"{x}", "malformed header"),
        (MAGIC + (2).to_bytes(4, "big") + b"[]", "not a JSON object"),
        (MAGIC + (2).to_bytes(4, "big") + b"{}", "no 'id'"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(data: bytes, message: str) -> None:
    """Malformed bytes raise EnvelopeError saying what is wrong."""
    with pytest.raises(EnvelopeError, match=message):
        decode(data)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b'{"id":"a","time":"x"}', "'time' must be a number"),
        (b'{"id":"a","attempt":0}', "'attempt' must be an integer >= 1: 0"),
        (b'{"id":"a","headers":{"k":1}}', "'headers' must map strings to strings"),
        (b'{"id":"a","key":5}', "'key' must be a string: 5"),
    ],
)
def test_bad_header_fields_are_rejected(header: bytes, message: str) -> None:
    """Header fields of the wrong type are refused, naming the field."""
    with pytest.raises(EnvelopeError, match=message):
        decode(MAGIC + len(header).to_bytes(4, "big") + header)


def test_with_attempt_rewrites_only_the_attempt() -> None:
    """Backends that redeliver by re-publishing bump the attempt, nothing else."""
    original = Envelope(id="a", type="T", payload=b"p", key="k", time=5.0)
    assert decode(with_attempt(encode(original), 3)) == Envelope(
        id="a", type="T", payload=b"p", key="k", time=5.0, attempt=3
    )
    assert with_attempt(b"junk", 3) == b"junk"


def test_dead_letter_record_roundtrip() -> None:
    """A dead letter kept in an ordinary stream decodes to the same facts and bytes."""
    letter = DeadLetter(
        id="m1",
        topic="orders",
        data=b"\x00original",
        reason="boom",
        error_type="ValueError",
        attempts=5,
        group="payments",
        published_at=1.5,
        dead_at=2.5,
    )
    assert decode_dead_letter(encode_dead_letter(letter)) == letter
    with pytest.raises(EnvelopeError, match="not an interlink frame"):
        decode_dead_letter(encode(Envelope(id="a", type="", payload=b"")))


def test_error_type_names_module_and_class() -> None:
    """Built-in errors by name, others with their module."""
    assert error_type_of(ValueError()) == "ValueError"
    assert error_type_of(BudgetExhausted("b", 0.1, 1.0)) == "interlink.errors.BudgetExhausted"


def test_failure_is_retried_with_the_retry_schedule() -> None:
    """Delivery n failing asks Retry for retry number n-1's delay."""
    retry = Retry(retries=5, backoff=0.5, multiplier=2.0, max_backoff=100, jitter="none")
    delays = [
        decide_failure(RuntimeError("x"), attempt=n, max_deliveries=10, retry=retry)
        for n in (1, 2, 3)
    ]
    assert delays == [Decision("retry", 0.5), Decision("retry", 1.0), Decision("retry", 2.0)]


def test_jitter_comes_from_the_policy_rng() -> None:
    """The delay is jittered by the Retry policy's own randomness."""
    retry = Retry(retries=5, backoff=1.0, jitter="full", rng=Random(1))
    expected = 1.0 * Random(1).random()
    decision = decide_failure(RuntimeError(), attempt=1, max_deliveries=5, retry=retry)
    assert decision.delay == pytest.approx(expected)


def test_max_deliveries_dead_letters() -> None:
    """The last allowed delivery failing goes to the DLQ with the error's type and text."""
    retry = Retry(retries=10, backoff=0.1)
    decision = decide_failure(ValueError("declined"), attempt=3, max_deliveries=3, retry=retry)
    assert decision.action == "dead_letter"
    assert decision.error_type == "ValueError"
    assert decision.reason == "declined (after 3 deliveries)"


def test_retry_giving_up_dead_letters() -> None:
    """When Retry runs out of attempts first, the message is dead-lettered."""
    retry = Retry(retries=1, backoff=0.1)
    decision = decide_failure(RuntimeError("x"), attempt=2, max_deliveries=10, retry=retry)
    assert decision == Decision(
        "dead_letter", reason="x (not retried after 2 deliveries)", error_type="RuntimeError"
    )


def test_not_retryable_error_dead_letters_at_once() -> None:
    """An error outside retry_on is not retried."""
    retry = Retry(retries=5, retry_on=ConnectionError)
    decision = decide_failure(KeyError("k"), attempt=1, max_deliveries=5, retry=retry)
    assert decision.action == "dead_letter"
    assert decision.error_type == "KeyError"


def test_exhausted_budget_dead_letters_naming_the_budget() -> None:
    """A retry budget that refuses sends the message to the DLQ, saying so."""
    budget = RetryBudget(ratio=0.1, min_per_second=0.0)
    retry = Retry(retries=5, budget=budget)
    decision = decide_failure(RuntimeError("x"), attempt=1, max_deliveries=5, retry=retry)
    assert decision.action == "dead_letter"
    assert "retry budget" in decision.reason
    assert decision.error_type == "RuntimeError"


def test_retry_after_hint_is_honoured() -> None:
    """An error carrying retry_after (a 429 from downstream) sets the delay."""
    error = RuntimeError("slow down")
    error.retry_after = 7.0  # type: ignore[attr-defined]
    decision = decide_failure(error, attempt=1, max_deliveries=5, retry=Retry(retries=3))
    assert decision == Decision("retry", 7.0)


def test_poison_and_ack_decisions() -> None:
    """Poison goes to the DLQ with its reason; ACK is the plain acknowledgement."""
    assert decide_poison("bad", "E") == Decision("dead_letter", reason="bad", error_type="E")
    assert Decision("ack") == ACK
