"""The envelope's wire format (CloudEvents in native headers) and the delivery decisions
(pure: no broker, no time)."""

from __future__ import annotations

import base64
import json
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink import Retry, RetryBudget
from interlink.errors import BudgetExhausted, InterlinkError
from interlink.messaging._codec import batch_of
from interlink.messaging.envelope import (
    ACK,
    AMQP,
    FIELDS,
    NATS,
    STRUCTURED,
    Binding,
    DeadLetter,
    Decision,
    EnvelopeError,
    OutgoingMessage,
    check_headers,
    decide_failure,
    decide_poison,
    decode_dead_letter,
    encode_dead_letter,
    error_type_of,
    headers_for,
    parse_time,
    read,
    reserved,
    rfc3339,
    with_attempt,
    with_id,
)

BINDINGS = [NATS, AMQP, FIELDS]
texts = st.text(max_size=30)
user_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(
    lambda name: not reserved(name)
)
bindings = st.sampled_from(BINDINGS)


@given(
    bindings,
    st.text(min_size=1, max_size=40),
    texts,
    st.binary(max_size=300),
    st.none() | texts,
    st.integers(min_value=0, max_value=4_000_000_000_000_000).map(lambda us: us / 1e6),
    st.integers(min_value=1, max_value=1000),
    st.none() | texts,
    st.dictionaries(user_names, texts, max_size=4),
)
def test_headers_for_and_read_roundtrip(  # noqa: PLR0917 - one per attribute
    binding: Binding,
    mid: str,
    type_name: str,
    payload: bytes,
    key: str | None,
    time: float,
    attempt: int,
    cid: str | None,
    user: dict[str, str],
) -> None:
    """Every attribute survives the headers of every binding; the body is the payload."""
    headers = headers_for(
        binding,
        message_id=mid,
        type=type_name,
        time=time,
        key=key,
        correlation_id=cid,
        attempt=attempt,
        headers=user,
        source="/svc",
    )
    envelope = read(binding, payload, headers, fallback_id="broker-id")
    assert envelope.error is None
    assert envelope.payload is payload
    assert (envelope.id, envelope.type, envelope.key) == (mid, type_name, key)
    assert (envelope.attempt, envelope.correlation_id, envelope.source) == (attempt, cid, "/svc")
    assert abs(envelope.time - time) < 1e-6
    assert dict(envelope.headers) == user


@pytest.mark.parametrize("binding", BINDINGS, ids=["nats", "amqp", "fields"])
def test_binding_names_follow_the_protocol_bindings(binding: Binding) -> None:
    """NATS writes ce- headers, AMQP cloudEvents: properties, Redis and SQLite ce_ fields;
    specversion 1.0, the type's content type, the key as partitionkey."""
    headers = headers_for(
        binding, message_id="m1", type="Order", time=0.0, key="k", correlation_id="c"
    )
    prefix = {NATS: "ce-", AMQP: "cloudEvents:", FIELDS: "ce_"}[binding]
    assert headers == {
        f"{prefix}specversion": "1.0",
        f"{prefix}id": "m1",
        f"{prefix}source": "/interlink",
        f"{prefix}type": "Order",
        f"{prefix}time": "1970-01-01T00:00:00.000000Z",
        "content-type": "application/json",
        f"{prefix}partitionkey": "k",
        f"{prefix}correlationid": "c",
    }
    assert headers_for(binding, message_id="m", type="bytes", time=0)["content-type"] == (
        "application/octet-stream"
    )


def test_trace_context_travels_as_the_distributed_tracing_extension() -> None:
    """traceparent/tracestate become ce-traceparent/ce-tracestate and come back unprefixed
    for the trace extractor; baggage stays an ordinary header."""
    user = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "x=1"}
    user["baggage"] = "k=v"
    headers = headers_for(NATS, message_id="m", type="t", time=1.0, headers=user)
    assert headers["ce-traceparent"] == user["traceparent"]
    assert headers["ce-tracestate"] == "x=1"
    assert headers["baggage"] == "k=v"
    assert dict(read(NATS, b"", headers, fallback_id="").headers) == user


def test_a_batchs_messages_share_all_headers_but_the_id_per_type_and_key() -> None:
    """``batch_of`` gives each message its full headers and, as ``shared``, the same mapping
    for every message of one type and key: those headers without the id."""
    user = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "x-user": "u"}
    items = batch_of(
        [b"1", b"2", "three", b"4"],
        lambda m: "k" if m == b"4" else None,
        binding=FIELDS,
        time=1.0,
        source="svc",
        correlation_id="c1",
        headers=user,
    )
    assert len({item.message_id for item in items}) == 4
    for item in items:
        assert item.headers[FIELDS.id] == item.message_id
        assert item.shared == {n: v for n, v in item.headers.items() if n != FIELDS.id}
        assert item.shared is not None
        assert item.shared[FIELDS.traceparent] == user["traceparent"]
    first, second, text, keyed = items
    assert first.shared is second.shared  # one object per type and key
    assert text.shared is not first.shared
    assert text.shared is not None
    assert text.shared[FIELDS.type] == "str"
    assert keyed.shared is not first.shared
    assert keyed.shared is not None
    assert keyed.shared[FIELDS.key] == "k"
    alone = OutgoingMessage(b"x", None, {FIELDS.id: "m"}, "m")
    assert alone.shared is None


def test_a_bare_payload_takes_the_brokers_id_and_no_type() -> None:
    """No CloudEvents headers: the body as it is, the broker's id, an empty type (the
    subscriber's model names it), foreign headers kept as the user's."""
    envelope = read(NATS, b'{"a": 1}', {"x-tenant": "t1"}, fallback_id="orders:7")
    assert envelope.error is None
    assert (envelope.id, envelope.type, envelope.payload) == ("orders:7", "", b'{"a": 1}')
    assert dict(envelope.headers) == {"x-tenant": "t1"}
    assert read(FIELDS, b"x", None, fallback_id="1-0").id == "1-0"


@pytest.mark.parametrize("binding", BINDINGS, ids=["nats", "amqp", "fields"])
def test_structured_mode_is_read_from_the_json_event(binding: Binding) -> None:
    """application/cloudevents+json: the attributes and data (JSON or base64) from the body."""
    event = {
        "specversion": "1.0",
        "id": "e1",
        "source": "/go-service",
        "type": "com.example.order",
        "time": "2026-12-07T10:00:00Z",
        "datacontenttype": "application/json",
        "partitionkey": "k1",
        "attempt": 2,
        "data": {"order_id": 5},
    }
    headers = {"content-type": STRUCTURED + "; charset=utf-8"}
    envelope = read(binding, json.dumps(event).encode(), headers, fallback_id="b")
    assert envelope.error is None
    assert (envelope.id, envelope.type, envelope.key, envelope.attempt) == (
        "e1",
        "com.example.order",
        "k1",
        2,
    )
    assert json.loads(envelope.payload) == {"order_id": 5}
    assert envelope.time == parse_time("2026-12-07T10:00:00Z")
    del event["data"]
    event["data_base64"] = base64.b64encode(b"\x00\xff").decode()
    event["datacontenttype"] = "application/octet-stream"
    raw = read(binding, json.dumps(event).encode(), headers, fallback_id="b")
    assert raw.payload == b"\x00\xff"
    assert raw.content_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "malformed structured CloudEvent"),
        (b"[1, 2]", "malformed structured CloudEvent"),
        (b'{"id": "x", "data_base64": "***"}', "malformed 'data_base64'"),
        (b'{"id": "x", "extra": {"nested": 1}}', "malformed structured CloudEvent: 'extra'"),
    ],
)
def test_a_malformed_structured_event_is_poison_with_its_body(body: bytes, problem: str) -> None:
    """A structured event that does not parse is dead-lettered, body kept, never a crash."""
    envelope = read(NATS, body, {"content-type": STRUCTURED}, fallback_id="b")
    assert envelope.error is not None
    assert problem in envelope.error
    assert envelope.payload == body


def test_foreign_values_of_reserved_attributes_are_ignored_or_poison() -> None:
    """A garbled attempt counts as 1; a garbled time makes the message poison: never a crash."""
    headers = headers_for(FIELDS, message_id="m", type="t", time=5.0)
    assert read(FIELDS, b"", {**headers, "ce_attempt": "a b"}, fallback_id="").attempt == 1
    assert read(FIELDS, b"", {**headers, "ce_attempt": "0"}, fallback_id="").attempt == 1
    poison = read(FIELDS, b"body", {**headers, "ce_time": "soon"}, fallback_id="")
    assert poison.error == "malformed 'ce_time'"
    assert poison.payload == b"body"


@given(bindings, st.binary(max_size=200), st.dictionaries(texts, texts, max_size=6))
def test_read_never_raises(binding: Binding, body: bytes, headers: dict[str, str]) -> None:
    """Any body with any headers reads into an envelope (``error`` set when unreadable)."""
    envelope = read(binding, body, headers, fallback_id="f")
    assert envelope.id
    if envelope.error is not None:
        assert envelope.payload == body


@given(
    bindings,
    st.dictionaries(
        st.sampled_from(
            ["ce-id", "ce_type", "cloudEvents:time", "content-type", "data", "Nats-Msg-Id", "CE-ID"]
        ),
        texts,
        min_size=1,
    ),
)
def test_user_headers_with_reserved_names_are_refused(
    binding: Binding, headers: dict[str, str]
) -> None:
    """A user header may not pose as a CloudEvents attribute or a backend's own field."""
    with pytest.raises(EnvelopeError, match="reserved name"):
        check_headers(headers)


def test_user_headers_must_be_text() -> None:
    """Header values are strings on every broker."""
    with pytest.raises(EnvelopeError, match="strings to strings"):
        check_headers({"n": 1})  # type: ignore[dict-item]


def test_attempt_and_id_rewrites() -> None:
    """A retry copy names its attempt; a replayed bare payload keeps its dead-letter id."""
    headers = headers_for(AMQP, message_id="m", type="t", time=0.0)
    assert read(AMQP, b"", with_attempt(AMQP, headers, 3), fallback_id="").attempt == 3
    assert with_id(AMQP, {}, "b1") == {"cloudEvents:id": "b1"}
    assert with_id(AMQP, headers, "other")["cloudEvents:id"] == "m"


@given(st.integers(min_value=0, max_value=4_000_000_000_000_000))
def test_rfc3339_round_trips_to_the_microsecond(micros: int) -> None:
    """The time attribute keeps microseconds, whatever second it falls in."""
    seconds = micros / 1e6
    text = rfc3339(seconds)
    assert text.endswith("Z")
    assert len(text) == 27
    parsed = parse_time(text)
    assert parsed is not None
    assert abs(parsed - seconds) < 1e-6


def test_envelope_error_is_an_interlink_error() -> None:
    """One error tree: EnvelopeError is an InterlinkError (and still a ValueError)."""
    assert issubclass(EnvelopeError, InterlinkError)
    assert issubclass(EnvelopeError, ValueError)


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
        headers={"ce_id": "m1", "x-tenant": "t"},
    )
    assert decode_dead_letter(encode_dead_letter(letter)) == letter
    with pytest.raises(EnvelopeError, match="not a dead-letter record"):
        decode_dead_letter(b'{"order_id": 1}')


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
