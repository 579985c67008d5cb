"""Constructor checks: every message names the parameter, the rule and the value."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from interlink import (
    Bulkhead,
    CircuitBreaker,
    Fallback,
    Hedge,
    RateLimiter,
    Retry,
    RetryBudget,
    Timeout,
    deadline,
)
from interlink.resilience import _validate as v


@pytest.mark.parametrize(
    ("check", "value", "message"),
    [
        (v.fraction, 0, "'x' must be in (0, 1]: 0"),
        (v.fraction, 1.0001, "'x' must be in (0, 1]: 1.0001"),
        (v.fraction, math.nan, "'x' must be in (0, 1]: nan"),
        (v.fraction, "0.5", "'x' must be in (0, 1]: '0.5'"),
        (v.fraction, True, "'x' must be in (0, 1]: True"),
        (v.positive, 0, "'x' must be a finite number > 0: 0"),
        (v.positive, math.inf, "'x' must be a finite number > 0: inf"),
        (v.positive, True, "'x' must be a finite number > 0: True"),
        (v.non_negative, -0.001, "'x' must be a finite number >= 0: -0.001"),
        (v.non_negative, False, "'x' must be a finite number >= 0: False"),
        (v.positive_int, 0, "'x' must be an integer >= 1: 0"),
        (v.positive_int, 2.0, "'x' must be an integer >= 1: 2.0"),
        (v.positive_int, True, "'x' must be an integer >= 1: True"),
    ],
)
def test_checks_refuse_with_the_documented_text(
    check: Callable[[str, float], float], value: object, message: str
) -> None:
    """Each check's message is exactly 'name' must be <rule>: <value>; bools are not numbers."""
    with pytest.raises(ValueError) as info:
        check("x", value)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_checks_return_the_value_as_given_kind() -> None:
    """Numeric checks hand back a float, integer checks the int."""
    assert v.fraction("x", 1) == 1.0
    assert isinstance(v.positive("x", 3), float)
    assert v.non_negative("x", 0) == 0.0
    assert v.at_least("x", 0, 0) == 0


# The classes of bad configuration the issue names, one representative per policy.
_RULE_01 = "must be in (0, 1]"
_JITTERS = "'none', 'full', 'equal', 'decorrelated'"
BAD: list[tuple[Callable[[], object], str]] = [
    (
        lambda: CircuitBreaker("b", failure_rate_threshold=0),
        f"'failure_rate_threshold' {_RULE_01}: 0",
    ),
    (
        lambda: CircuitBreaker("b", failure_rate_threshold=True),
        f"'failure_rate_threshold' {_RULE_01}: True",
    ),
    (
        lambda: CircuitBreaker("b", slow_call_rate_threshold=1.5),
        f"'slow_call_rate_threshold' {_RULE_01}: 1.5",
    ),
    (lambda: CircuitBreaker("b", cooldown=-1), "'cooldown' must be a finite number >= 0: -1"),
    (lambda: CircuitBreaker("b", window=-30), "'window' must be a finite number > 0: -30"),
    (lambda: Retry(-1), "'retries' must be an integer >= 0: -1"),
    (lambda: Retry(jitter="gaussian"), f"'jitter' must be one of {_JITTERS}: 'gaussian'"),
    (lambda: Retry(backoff=-0.1), "'backoff' must be a finite number >= 0: -0.1"),
    (lambda: RetryBudget(ttl=-10), "'ttl' must be a finite number > 0: -10"),
    (lambda: Timeout(-1), "'seconds' must be a finite number > 0: -1"),
    (lambda: deadline(-0.5), "'seconds' must be a finite number >= 0: -0.5"),
    (lambda: Hedge(delay=-1), "'delay' must be a finite number >= 0: -1"),
    (lambda: Bulkhead(2, 1, -1), "'queue_timeout' must be a finite number >= 0: -1"),
    (lambda: RateLimiter(-5), "'rate' must be a finite number > 0: -5"),
    (
        lambda: Fallback(cache_last_success=True, max_age=-1),
        "'max_age' must be a finite number > 0: -1",
    ),
]


@pytest.mark.parametrize(("build", "message"), BAD, ids=[m.split("'")[1] for _, m in BAD])
def test_bad_configuration_fails_at_construction(build: Callable[[], object], message: str) -> None:
    """Thresholds outside (0, 1], negative durations, retries < 0 and unknown jitter all raise
    ValueError naming the parameter and the value, before any call is made."""
    with pytest.raises(ValueError) as info:
        build()
    assert str(info.value) == message
