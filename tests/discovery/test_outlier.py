"""Passive outlier ejection: streaks, growing ejections, caps, and returns."""

from __future__ import annotations

import pytest

from interlink.discovery import OutlierOptions
from interlink.discovery.outlier import (
    DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_CONSECUTIVE_FAILURES,
    DEFAULT_MAX_EJECTION_PERCENT,
    DEFAULT_MAX_EJECTION_TIME,
    OutlierDetector,
    OutlierState,
)


def fail(detector: OutlierDetector, state: OutlierState, times: int, now: float = 0.0) -> bool:
    ejected = False
    for _ in range(times):
        ejected = detector.failure(state, now, total=3, ejected=0) or ejected
    return ejected


def test_defaults_are_pinned() -> None:
    """The defaults are the documented ones."""
    options = OutlierOptions()
    assert (DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_BASE_EJECTION_TIME) == (5, 5.0)
    assert (DEFAULT_MAX_EJECTION_TIME, DEFAULT_MAX_EJECTION_PERCENT) == (60.0, 0.5)
    assert options.consecutive_failures == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"consecutive_failures": 0}, "'consecutive_failures' must be an integer >= 1: 0"),
        ({"base_ejection_time": 0}, "'base_ejection_time' must be a finite number > 0: 0"),
        ({"max_ejection_percent": 1.5}, r"'max_ejection_percent' must be in \(0, 1\]: 1.5"),
        ({"max_ejection_time": 1.0}, "'max_ejection_time' must be >= base_ejection_time"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict[str, float], message: str) -> None:
    """Invalid options raise ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=message):
        OutlierOptions(**kwargs)  # type: ignore[arg-type]


def test_n_consecutive_failures_eject() -> None:
    """The Nth failure in a row ejects for the base time."""
    detector = OutlierDetector(OutlierOptions(consecutive_failures=3, base_ejection_time=2.0))
    state = OutlierState()
    assert not fail(detector, state, 2)
    assert fail(detector, state, 1, now=10.0)
    assert state.ejected_until == 12.0


def test_a_success_ends_the_streak() -> None:
    """Failures separated by a success never add up to an ejection."""
    detector = OutlierDetector(OutlierOptions(consecutive_failures=3))
    state = OutlierState()
    fail(detector, state, 2)
    detector.success(state)
    assert not fail(detector, state, 2)


def test_repeat_ejections_grow_and_are_capped() -> None:
    """Each repeat ejection lasts base x count, never more than max_ejection_time."""
    options = OutlierOptions(consecutive_failures=1, base_ejection_time=2.0, max_ejection_time=5.0)
    detector = OutlierDetector(options)
    state = OutlierState()
    periods = []
    now = 0.0
    for _ in range(4):
        assert detector.failure(state, now, total=3, ejected=0)
        assert state.ejected_until is not None
        periods.append(state.ejected_until - now)
        now = state.ejected_until
        assert detector.due(state, now)
        detector.restore(state, now)
    assert periods == [2.0, 4.0, 5.0, 5.0]


def test_good_behaviour_resets_the_multiplier() -> None:
    """An instance in rotation for max_ejection_time after returning starts over at base."""
    options = OutlierOptions(consecutive_failures=1, base_ejection_time=1.0, max_ejection_time=10.0)
    detector = OutlierDetector(options)
    state = OutlierState()
    detector.failure(state, 0.0, total=3, ejected=0)
    detector.restore(state, 1.0)
    assert detector.failure(state, 20.0, total=3, ejected=0)
    assert state.ejected_until == 21.0


def test_max_ejection_percent_caps_simultaneous_ejections() -> None:
    """No more than the allowed share is ejected at once (at least one may always go)."""
    detector = OutlierDetector(OutlierOptions(max_ejection_percent=0.5))
    assert detector.may_eject(total=4, ejected=1)
    assert not detector.may_eject(total=4, ejected=2)
    assert detector.may_eject(total=3, ejected=0)
    assert not detector.may_eject(total=3, ejected=1)


def test_the_last_instance_is_never_ejected() -> None:
    """With one instance, or all others out, failures do not eject."""
    detector = OutlierDetector(OutlierOptions(consecutive_failures=1, max_ejection_percent=1.0))
    assert not detector.may_eject(total=1, ejected=0)
    assert not detector.may_eject(total=3, ejected=2)
    state = OutlierState()
    assert not detector.failure(state, 0.0, total=1, ejected=0)
    assert not state.ejected
