"""The breaker against a plain reference model, driven by hypothesis."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

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


Permit = tuple[str, int]  # (state at admission, generation at admission)


@dataclass
class Model:
    """The breaker written the obvious way: a list of outcomes, a state name and a generation
    that changes on every transition (so late outcomes of an earlier state are recognised)."""

    state: str = "closed"
    entries: list[tuple[int, bool]] = field(default_factory=list)
    head: int | None = None
    open_until: float = 0.0
    trials: int = 0
    admitted: int = 0
    gen: int = 0
    min_calls: int = MIN_CALLS
    count: int | None = None  # a count window of this many calls instead of the time window

    def bucket(self, now: float) -> int:
        return math.floor(now / (WINDOW / BUCKETS))

    def window(self, now: float) -> list[tuple[int, bool]]:
        """The outcomes still in the window at ``now``."""
        if self.count is not None:
            return self.entries[-self.count :]
        if self.head is None:
            return []
        head = max(self.head, self.bucket(now))
        return [e for e in self.entries if e[0] > head - BUCKETS]

    def move(self, state: str, now: float) -> None:
        self.state, self.gen = state, self.gen + 1
        if state == "open":
            self.open_until = now + COOLDOWN
        elif state == "half_open":
            self.trials = self.admitted = 0
        elif state == "closed":
            self.entries, self.head = [], None

    def acquire(self, now: float) -> Permit | None:
        """The permit for a call starting now, or None when it is rejected."""
        if self.state == "open":
            if now < self.open_until:
                return None
            self.move("half_open", now)
        if self.state == "half_open":
            if self.admitted >= HALF_OPEN:
                return None
            self.admitted += 1
        if self.state == "forced_open":
            return None
        return self.state, self.gen

    def finish(self, permit: Permit, outcome: str, now: float) -> None:
        """``outcome`` is ``ok``, ``fail`` or ``release`` (no outcome to record)."""
        state, gen = permit
        if gen != self.gen or (outcome == "release" and state != "half_open"):
            return  # the breaker moved on, or there is nothing to record
        if state == "half_open":
            if outcome == "release":
                self.admitted = max(self.admitted - 1, 0)
            elif outcome == "fail":
                self.move("open", now)
            else:
                self.trials += 1
                if self.trials == HALF_OPEN:
                    self.move("closed", now)
        elif state == "closed":
            b = self.bucket(now)
            self.head = b if self.head is None else max(self.head, b)
            self.entries.append((b, outcome == "fail"))
            win = self.window(now)
            failures = sum(1 for _, failed in win if failed)
            needed = self.min_calls if self.count is None else min(self.min_calls, self.count)
            if outcome == "fail" and len(win) >= needed and failures >= THRESHOLD * len(win):
                self.move("open", now)

    def call(self, now: float, ok: bool) -> bool:
        """Returns False when the call is rejected."""
        permit = self.acquire(now)
        if permit is None:
            return False
        self.finish(permit, "ok" if ok else "fail", now)
        return True


STATES = ("closed", "open", "half_open", "forced_open", "disabled")


class BreakerVersusModel(RuleBasedStateMachine):
    """Every step: same verdict (admitted or rejected) and same state as the model. Besides
    one-shot calls, permits may be held open (concurrent calls still running) and finished
    later, and the operator's switches may be thrown at any moment."""

    clock_every = 1
    count: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.breaker = CircuitBreaker(
            "model",
            failure_rate_threshold=THRESHOLD,
            window=WINDOW if self.count is None else self.count,
            window_type="time" if self.count is None else "count",
            minimum_calls=MIN_CALLS,
            cooldown=COOLDOWN,
            half_open_calls=HALF_OPEN,
            buckets=BUCKETS,
            clock_every=self.clock_every,
            clock=self.clock,
        )
        self.model = Model(count=self.count)
        self.held: list[tuple[int, Permit]] = []  # (breaker permit, model permit)

    @rule(dt=st.sampled_from([0.0, 0.5, 2.9, 3.0, 7.0, 29.0, 31.0, 59.9, 60.0, 75.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(outcomes=st.lists(st.booleans(), min_size=1, max_size=8))
    def calls(self, outcomes: list[bool]) -> None:
        """One-shot calls in a row (a burst gets the breaker to OPEN in few steps)."""
        for ok in outcomes:
            expected = self.model.call(self.clock(), ok)

            def fn(ok: bool = ok) -> None:
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

    @rule(n=st.integers(1, HALF_OPEN + 1))
    def hold(self, n: int) -> None:
        """Calls are admitted and keep running while other steps happen."""
        for _ in range(n):
            expected = self.model.acquire(self.clock())
            permit = self.breaker.try_acquire()
            assert bool(permit) == (expected is not None)
            if expected is not None:
                self.held.append((permit, expected))

    @precondition(lambda self: bool(self.held))
    @rule(pick=st.integers(0, 1000), outcome=st.sampled_from(["ok", "fail", "release"]))
    def finish(self, pick: int, outcome: str) -> None:
        """A held call ends, possibly long after the breaker moved on."""
        permit, expected = self.held.pop(pick % len(self.held))
        self.model.finish(expected, outcome, self.clock())
        if outcome == "ok":
            self.breaker.on_success(permit)
        elif outcome == "fail":
            self.breaker.on_failure(permit)
        else:
            self.breaker.release(permit)

    @rule(switch=st.sampled_from(["force_open", "disable", "reset"]))
    def operator(self, switch: str) -> None:
        getattr(self.breaker, switch)()
        self.model.move(
            {"force_open": "forced_open", "disable": "disabled", "reset": "closed"}[switch],
            self.clock(),
        )

    @invariant()
    def same_state(self) -> None:
        assert STATES[self.breaker._g & 7] == self.model.state

    @invariant()
    def same_failures_in_window(self) -> None:
        if self.model.state == "closed" and self.model.entries:
            win = self.model.window(self.clock())
            m = self.breaker.metrics
            assert m.failures == sum(1 for _, f in win if f)
            assert m.calls == len(win)


class CountBreakerVersusModel(BreakerVersusModel):
    """The same, with a count window of the last 8 calls."""

    count = 8


_settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestExactBreaker = BreakerVersusModel.TestCase
TestExactBreaker.settings = _settings
TestCountBreaker = CountBreakerVersusModel.TestCase
TestCountBreaker.settings = _settings


def test_state_names_match_the_model() -> None:
    """The model's state strings are the State values."""
    assert tuple(s.value for s in State) == STATES


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
