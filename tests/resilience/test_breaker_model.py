"""The breaker against a plain reference model, driven by hypothesis."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from interlink.errors import CircuitOpenError
from interlink.resilience.breaker import CircuitBreaker, State
from interlink.testing import FakeClock

WINDOW = 30.0
BUCKETS = 10
MIN_CALLS = 5
COOLDOWN = 60.0
HALF_OPEN = 2
THRESHOLD = 0.5


class Boom(Exception):
    """A failed call."""


@dataclass
class Model:
    """The breaker written the obvious way: a list of timestamped outcomes."""

    state: str = "closed"
    entries: list[tuple[int, bool]] = field(default_factory=list)
    head: int | None = None
    open_until: float = 0.0
    trials: int = 0
    min_calls: int = MIN_CALLS

    def bucket(self, now: float) -> int:
        return math.floor(now / (WINDOW / BUCKETS))

    def window(self, now: float) -> list[tuple[int, bool]]:
        """The outcomes whose bucket is one of the last BUCKETS up to ``now``'s."""
        if self.head is None:
            return []
        head = max(self.head, self.bucket(now))
        return [e for e in self.entries if e[0] > head - BUCKETS]

    def call(self, now: float, ok: bool) -> bool:
        """Returns False when the call is rejected."""
        if self.state == "open":
            if now < self.open_until:
                return False
            self.state, self.trials = "half_open", 0
        if self.state == "half_open":
            if not ok:
                self.state, self.open_until = "open", now + COOLDOWN
                return True
            self.trials += 1
            if self.trials == HALF_OPEN:
                self.state, self.entries, self.head = "closed", [], None
            return True
        b = self.bucket(now)
        self.head = b if self.head is None else max(self.head, b)
        self.entries.append((b, not ok))
        win = self.window(now)
        failures = sum(1 for _, failed in win if failed)
        if not ok and len(win) >= self.min_calls and failures >= THRESHOLD * len(win):
            self.state, self.open_until = "open", now + COOLDOWN
        return True


class BreakerVersusModel(RuleBasedStateMachine):
    """Every step: same verdict (admitted or rejected) and same state as the model."""

    clock_every = 1

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker(
            "model",
            failure_rate_threshold=THRESHOLD,
            window=WINDOW,
            minimum_calls=MIN_CALLS,
            cooldown=COOLDOWN,
            half_open_calls=HALF_OPEN,
            buckets=BUCKETS,
            clock_every=self.clock_every,
            clock=self.clock,
        )
        self.model = Model()

    @rule(dt=st.sampled_from([0.0, 0.5, 2.9, 3.0, 7.0, 29.0, 31.0, 59.9, 60.0, 75.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(ok=st.booleans())
    def call(self, ok: bool) -> None:
        expected = self.model.call(self.clock(), ok)

        def fn() -> None:
            if not ok:
                raise Boom

        try:
            self.breaker.call(fn)
            admitted = True
        except Boom:
            admitted = True
        except CircuitOpenError:
            admitted = False
        assert admitted == expected

    @invariant()
    def same_state(self) -> None:
        g = self.breaker._g & 7
        assert ("closed", "open", "half_open")[g] == self.model.state

    @invariant()
    def same_failures_in_window(self) -> None:
        if self.model.state == "closed" and self.model.head is not None:
            win = self.model.window(self.clock())
            m = self.breaker.metrics
            assert m.failures == sum(1 for _, f in win if f)
            assert m.calls == len(win)


TestExactBreaker = BreakerVersusModel.TestCase
TestExactBreaker.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_state_names_match_the_model() -> None:
    """The model's state strings are the State values."""
    assert [s.value for s in State][:3] == ["closed", "open", "half_open"]


@pytest.mark.parametrize("seed", range(20))
def test_sampled_window_stays_within_its_documented_error(seed: int) -> None:
    """With the default sampling failures are exact and successes are never over-counted;
    at most a few sampling batches are dated early (and so leave the window early)."""
    import random

    rng = random.Random(seed)
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "sampled",
        window=WINDOW,
        minimum_calls=10**6,
        buckets=BUCKETS,
        clock=clock,
    )
    model = Model(min_calls=10**6)
    for _ in range(40):
        clock.advance(rng.choice([0.0, 1.0, 3.0, 10.0, 31.0]))
        for _ in range(rng.randrange(0, 200)):
            ok = rng.random() < 0.8
            model.call(clock(), ok)
            with contextlib.suppress(Boom):
                breaker.call(lambda ok=ok: None if ok else (_ for _ in ()).throw(Boom()))
        win = model.window(clock())
        m = breaker.metrics
        assert m.failures == sum(1 for _, f in win if f)
        assert len(win) - 2 * 64 <= m.calls <= len(win)
