"""Failure classification, idempotency and Retry-After, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.http.classify import (
    IDEMPOTENT_METHODS,
    AttemptFailed,
    is_failure_status,
    is_retryable,
    may_resend,
    parse_retry_after,
    status_failure,
)


@given(st.integers(min_value=100, max_value=599))
def test_failure_statuses_are_5xx_408_and_429(status: int) -> None:
    """Exactly 5xx, 408 and 429 are the callee's failures."""
    assert is_failure_status(status) == (status >= 500 or status in (408, 429))


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS))
def test_idempotent_methods_may_be_resent(method: str) -> None:
    """GET, HEAD, PUT, DELETE, OPTIONS and TRACE may be sent again."""
    assert may_resend(method)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
def test_other_methods_need_an_idempotency_key(method: str) -> None:
    """POST and PATCH are resent only with an Idempotency-Key."""
    assert not may_resend(method)
    assert not may_resend(method, {"content-type": "x"})
    assert may_resend(method, {"idempotency-key": "k"})


def test_retry_after_in_seconds() -> None:
    """Delta-seconds are read as is."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0


def test_retry_after_as_an_http_date() -> None:
    """An HTTP date is turned into seconds from now; a past date into 0."""
    when = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    now = datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 10.0
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now + 60) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-1", "1.5", "Mon, 99 Foo 2030"])
def test_unreadable_retry_after_is_ignored(value: str | None) -> None:
    """Anything else is no hint at all."""
    assert parse_retry_after(value) is None


def test_status_failure_carries_retry_after_for_429_and_503_only() -> None:
    """Retry-After counts on 429 and 503; on a 500 the backoff schedule applies."""
    for status, expected in ((429, 2.0), (503, 2.0), (500, None)):
        failure = status_failure(
            status, "2", target="t", response=None, resend=True, max_retry_after=10
        )
        assert failure.retry_after == expected
        assert failure.retryable


def test_status_failure_beyond_max_retry_after_is_not_retryable() -> None:
    """A server asking for more than max_retry_after is not waited for."""
    failure = status_failure(503, "60", target="t", response=None, resend=True, max_retry_after=10)
    assert not failure.retryable


def test_is_retryable_only_for_retryable_attempt_failures() -> None:
    """Only an AttemptFailed marked retryable is retried; any other error is not."""
    assert is_retryable(AttemptFailed("connect", "t"))
    assert not is_retryable(AttemptFailed("connect", "t", retryable=False))
    assert not is_retryable(ValueError("x"))
    assert not is_retryable(KeyboardInterrupt())


def test_attempt_failed_messages() -> None:
    """The internal outcome names the status or the kind of failure."""

    class R:
        status = 503

    assert str(AttemptFailed("status", "http://a/b", response=R())) == "HTTP 503 from http://a/b"
    assert str(AttemptFailed("timeout", "http://a/b")) == "timeout failure calling http://a/b"
