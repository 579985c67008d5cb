"""Status classification: what is retried, what opens the breaker, what the server answers."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.errors import (
    BudgetExhausted,
    BulkheadFull,
    CircuitOpenError,
    DeadlineExceeded,
    RateLimited,
)
from interlink.grpc.status import (
    BREAKER_FAILURE_CODES,
    NEVER_RETRIED_CODES,
    PUSHBACK_KEY,
    DownstreamStatusError,
    StatusError,
    classify,
    is_retryable,
    pushback,
    should_fall_back,
    status_for_exception,
)

S = grpc.StatusCode
ERR = RuntimeError("grpc's error")


def verdict(
    code: grpc.StatusCode, *, idempotent: bool = False, attempt_timeout_hit: bool = False
) -> StatusError:
    return classify(ERR, code, (), idempotent=idempotent, attempt_timeout_hit=attempt_timeout_hit)


@pytest.mark.parametrize("code", [S.UNAVAILABLE, S.RESOURCE_EXHAUSTED])
def test_transient_codes_are_retried_for_every_method(code: grpc.StatusCode) -> None:
    """UNAVAILABLE and RESOURCE_EXHAUSTED are retried even for non-idempotent methods."""
    assert verdict(code).retryable
    assert verdict(code, idempotent=True).retryable


def test_aborted_is_retried_only_for_idempotent_methods() -> None:
    """ABORTED may have done the work: only an idempotent method is repeated."""
    assert not verdict(S.ABORTED).retryable
    assert verdict(S.ABORTED, idempotent=True).retryable


def test_deadline_exceeded_needs_idempotent_and_a_per_attempt_timeout() -> None:
    """Only a per-attempt timeout of an idempotent method leaves time for another try."""
    assert not verdict(S.DEADLINE_EXCEEDED, idempotent=True).retryable
    assert not verdict(S.DEADLINE_EXCEEDED, attempt_timeout_hit=True).retryable
    assert verdict(S.DEADLINE_EXCEEDED, idempotent=True, attempt_timeout_hit=True).retryable


@pytest.mark.parametrize("code", sorted(NEVER_RETRIED_CODES | {S.INTERNAL, S.UNKNOWN}, key=str))
def test_caller_errors_and_crashes_are_never_retried(code: grpc.StatusCode) -> None:
    """INVALID_ARGUMENT, NOT_FOUND, ... INTERNAL: not retried, even for idempotent methods."""
    assert not verdict(code, idempotent=True, attempt_timeout_hit=True).retryable


@pytest.mark.parametrize("code", list(S))
def test_breaker_counts_exactly_the_listed_failures(code: grpc.StatusCode) -> None:
    """DownstreamStatusError (what the breaker records) iff the code is a breaker failure."""
    if code is S.OK:
        return
    error = verdict(code)
    assert isinstance(error, DownstreamStatusError) == (code in BREAKER_FAILURE_CODES)
    assert error.error is ERR
    assert error.code is code


def test_breaker_failure_codes_are_the_documented_five() -> None:
    """The set is pinned: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED."""
    assert {c.name for c in BREAKER_FAILURE_CODES} == {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "INTERNAL",
        "UNKNOWN",
        "RESOURCE_EXHAUSTED",
    }


def test_pushback_becomes_retry_after_in_seconds() -> None:
    """`grpc-retry-pushback-ms: 250` makes the retry wait 0.25 s."""
    error = classify(ERR, S.RESOURCE_EXHAUSTED, ((PUSHBACK_KEY, "250"),), idempotent=False)
    assert error.retryable
    assert error.retry_after == 0.25


@pytest.mark.parametrize("value", ["-1", "soon", "", "1.5", b"\xff"])
def test_malformed_or_negative_pushback_means_do_not_retry(value: str | bytes) -> None:
    """gRFC A6: a pushback that is not a non-negative integer stops the retries."""
    error = classify(ERR, S.UNAVAILABLE, ((PUSHBACK_KEY, value),), idempotent=True)
    assert not error.retryable
    assert error.retry_after is None


def test_pushback_is_ignored_for_a_status_that_is_not_retried() -> None:
    """A pushback does not make NOT_FOUND retryable."""
    error = classify(ERR, S.NOT_FOUND, ((PUSHBACK_KEY, "10"),), idempotent=True)
    assert not error.retryable
    assert error.retry_after is None


@given(st.integers(min_value=0, max_value=10**9))
def test_any_non_negative_pushback_is_read_exactly(ms: int) -> None:
    """Every whole number of milliseconds reads back as ms / 1000 seconds."""
    assert pushback([("other", "x"), (PUSHBACK_KEY, str(ms).encode())]) == (True, ms / 1000)


def test_no_metadata_means_no_pushback() -> None:
    """Without trailing metadata the backoff schedule decides."""
    assert pushback(None) == (True, None)
    assert pushback([("x-request-id", "a")]) == (True, None)


def test_is_retryable_only_accepts_retryable_status_errors() -> None:
    """The Retry predicate refuses interlink's rejections and foreign errors."""
    assert is_retryable(verdict(S.UNAVAILABLE))
    assert not is_retryable(verdict(S.NOT_FOUND))
    assert not is_retryable(CircuitOpenError("menu", 1.0))
    assert not is_retryable(ConnectionError())


def test_fallback_predicate_covers_downstream_trouble_not_caller_errors() -> None:
    """Fallback answers for breaker failures and interlink's refusals, never for NOT_FOUND."""
    assert should_fall_back(verdict(S.UNAVAILABLE))
    assert should_fall_back(CircuitOpenError("menu", 1.0))
    assert should_fall_back(DeadlineExceeded("menu"))
    assert not should_fall_back(verdict(S.NOT_FOUND))
    assert not should_fall_back(ValueError())


def test_status_error_text_names_the_code() -> None:
    """The message is short and says whether the status was retryable."""
    assert str(verdict(S.UNAVAILABLE)) == "gRPC status UNAVAILABLE (retryable)"
    assert str(verdict(S.NOT_FOUND)) == "gRPC status NOT_FOUND"


@pytest.mark.parametrize(
    ("exc", "code", "pushback_s"),
    [
        (RuntimeError("db password is hunter2"), S.INTERNAL, None),
        (DeadlineExceeded("b", 1.0), S.DEADLINE_EXCEEDED, None),
        (CircuitOpenError("c", 1.0), S.UNAVAILABLE, None),
        (BudgetExhausted("c", 0.2, 10), S.UNAVAILABLE, None),
        (BulkheadFull("b", 10, 0), S.RESOURCE_EXHAUSTED, None),
        (RateLimited("b", 5.0, 1, 0.2), S.RESOURCE_EXHAUSTED, 0.2),
    ],
)
def test_server_maps_exceptions_to_safe_statuses(
    exc: BaseException, code: grpc.StatusCode, pushback_s: float | None
) -> None:
    """Handler exceptions map to a status and a generic text, never the exception's text."""
    got_code, details, got_pushback = status_for_exception(exc)
    assert (got_code, got_pushback) == (code, pushback_s)
    assert str(exc) not in details
    assert "hunter2" not in details


def test_unhandled_downstream_status_is_internal_not_copied() -> None:
    """A callee's NOT_FOUND escaping the handler is INTERNAL; its DEADLINE_EXCEEDED stays."""

    class Rpc(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

    assert status_for_exception(Rpc(S.NOT_FOUND))[0] is S.INTERNAL
    assert status_for_exception(Rpc(S.UNAVAILABLE))[0] is S.INTERNAL
    assert status_for_exception(Rpc(S.DEADLINE_EXCEEDED))[0] is S.DEADLINE_EXCEEDED


def test_status_errors_share_the_interlink_base() -> None:
    """A StatusError is an InterlinkError, and still not a reason to fall back or to answer
    UNAVAILABLE when it is a caller error."""
    from interlink.errors import InterlinkError

    assert issubclass(StatusError, InterlinkError)
    assert isinstance(verdict(S.NOT_FOUND), InterlinkError)
    assert not should_fall_back(verdict(S.INVALID_ARGUMENT))
    assert status_for_exception(verdict(S.NOT_FOUND))[0] is S.INTERNAL
    assert status_for_exception(verdict(S.UNAVAILABLE))[0] is S.INTERNAL
    assert status_for_exception(verdict(S.DEADLINE_EXCEEDED))[0] is S.DEADLINE_EXCEEDED
