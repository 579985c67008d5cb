"""The propagated headers and the deadline header's parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink import DeadlineExceeded, deadline
from interlink.http.propagation import attempt_ms, outgoing_headers, parse_timeout_ms
from interlink.testing import FakeClock


def test_attempt_ms_is_the_lesser_of_deadline_and_attempt_timeout() -> None:
    """Whole milliseconds, rounded down, from the deadline or the attempt timeout."""
    clock = FakeClock()
    assert attempt_ms(None, "x") is None
    assert attempt_ms(0.25, "x") == 250
    with deadline(1.0, clock=clock):
        assert attempt_ms(None, "x") == 1000
        assert attempt_ms(0.3, "x") == 300
        clock.advance(0.9995)
        with pytest.raises(DeadlineExceeded, match="no time left to call x"):
            attempt_ms(None, "x")


def test_outgoing_headers_add_and_keep() -> None:
    """The correlation id and deadline are added; a header the caller set is kept."""
    assert outgoing_headers(None, "c1", 1500) == {
        "x-request-id": "c1",
        "x-request-timeout-ms": "1500",
    }
    given_headers = {"x-request-id": "mine"}
    out = outgoing_headers(given_headers, "c1", None)
    assert out == {"x-request-id": "mine"}
    assert out is not given_headers
    assert outgoing_headers(None, None, None) == {}


@given(st.integers(min_value=0, max_value=9_999_999_999))
def test_parse_timeout_ms_reads_what_is_written(ms: int) -> None:
    """Every integer of up to ten digits round-trips."""
    assert parse_timeout_ms(str(ms)) == ms


@pytest.mark.parametrize("raw", ["-1", "1e3", "0x10", "١٢", " ", "12345678901", "+5"])
def test_parse_timeout_ms_refuses_the_rest(raw: str) -> None:
    """Signs, exponents, non-ASCII digits and over-long values are refused."""
    with pytest.raises(ValueError, match="'x-request-timeout-ms' must be a non-negative integer"):
        parse_timeout_ms(raw)
