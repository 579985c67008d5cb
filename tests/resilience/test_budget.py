"""RetryBudget: deposits, withdrawals, expiry, exact counts under threads."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.resilience.budget import BudgetSnapshot, RetryBudget
from interlink.testing.clock import FakeClock


def drain(budget: RetryBudget) -> int:
    """Withdraw until refused; return how many were granted."""
    n = 0
    while budget.try_withdraw():
        n += 1
    return n


def test_defaults_are_finagles() -> None:
    """The defaults allow 20 % retries on top of 10 per second over 10 s."""
    budget = RetryBudget(clock=FakeClock())
    assert (budget.ratio, budget.min_per_second, budget.ttl) == (0.2, 10.0, 10.0)
    assert budget.name == "retry-budget"


def test_fresh_budget_holds_the_reserve() -> None:
    """Without traffic the balance is min_per_second * ttl."""
    budget = RetryBudget(ratio=0.2, min_per_second=3, ttl=10, clock=FakeClock())
    assert budget.balance == 30.0
    assert drain(budget) == 30


def test_deposits_add_ratio_each() -> None:
    """Each deposit adds ``ratio`` retries to the balance."""
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=10, clock=FakeClock())
    for _ in range(7):
        budget.deposit()
    assert budget.balance == 3.5
    assert drain(budget) == 3


@pytest.mark.parametrize(("ratio", "deposits"), [(0.57, 100), (0.1, 30), (0.7, 10), (0.3, 10)])
def test_ratio_is_exact_despite_float_rounding(ratio: float, deposits: int) -> None:
    """ratio x deposits retries are granted even when the product rounds just below."""
    budget = RetryBudget(ratio=ratio, min_per_second=0, ttl=10, clock=FakeClock())
    for _ in range(deposits):
        budget.deposit()
    assert drain(budget) == round(ratio * deposits)


def test_zero_ratio_and_floor_allows_nothing() -> None:
    """ratio=0 and min_per_second=0 is a budget that never allows a retry."""
    budget = RetryBudget(ratio=0, min_per_second=0, clock=FakeClock())
    budget.deposit()
    assert not budget.try_withdraw()


def test_refusal_takes_nothing_and_is_counted() -> None:
    """A refused withdrawal leaves the balance alone and counts in ``refused``."""
    budget = RetryBudget(ratio=0, min_per_second=0.1, ttl=10, clock=FakeClock())
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    assert not budget.try_withdraw()
    snap = budget.snapshot()
    assert snap == BudgetSnapshot(deposits=0, retries=1, refused=2, balance=0.0)


def test_deposits_expire_after_ttl() -> None:
    """A deposit counts until ttl has passed, then no more."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    for _ in range(5):
        budget.deposit()
    clock.advance(9.99)
    assert budget.balance == 5.0
    clock.advance(0.01)
    assert budget.balance == 0.0
    assert not budget.try_withdraw()


def test_deposits_expire_bucket_by_bucket() -> None:
    """Deposits made a second apart leave the window a second apart."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    for _ in range(3):
        budget.deposit()
        clock.advance(1.0)
    # deposits at t=0, 1, 2; now t=3
    assert budget.snapshot().deposits == 3
    clock.advance(7.0)  # t=10: the t=0 deposit is gone
    assert budget.snapshot().deposits == 2
    clock.advance(1.0)
    assert budget.snapshot().deposits == 1
    clock.advance(1.0)
    assert budget.snapshot().deposits == 0


def test_withdrawals_expire_and_the_reserve_returns() -> None:
    """Spent retries count for ttl; after that the floor is available again."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0, min_per_second=1, ttl=10, clock=clock)
    assert drain(budget) == 10
    clock.advance(5.0)
    assert drain(budget) == 0
    clock.advance(5.0)
    assert drain(budget) == 10


def test_long_pause_resets_the_window() -> None:
    """After many ttl without calls the budget is as new."""
    clock = FakeClock(start=1234.5)
    budget = RetryBudget(ratio=0.5, min_per_second=1, ttl=10, clock=clock)
    for _ in range(100):
        budget.deposit()
    drain(budget)
    clock.advance(1000.0)
    assert budget.snapshot() == BudgetSnapshot(deposits=0, retries=0, refused=1, balance=10.0)


def test_deposit_after_a_pause_counts_in_the_new_window() -> None:
    """A lone deposit after a long quiet period is attributed to now, not to the past."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    clock.advance(35.5)
    budget.deposit()
    clock.advance(9.0)
    assert budget.balance == 1.0


def test_deposit_takes_the_callers_reading() -> None:
    """``deposit(now)`` books at ``now``, a reading of ``clock`` taken earlier: a reading in a
    bucket already past still counts, in the current one."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    assert budget.clock is clock
    start = clock()
    clock.advance(35.5)
    budget.deposit(clock())
    budget.deposit(start)
    assert budget.snapshot().deposits == 2
    clock.advance(9.0)
    assert budget.balance == 2.0
    clock.advance(1.0)
    assert budget.balance == 0.0


def test_describe_and_repr_name_the_settings() -> None:
    """describe() and repr() carry the settings a pipeline reports."""
    budget = RetryBudget(0.1, 5, 2.0, name="orders", clock=FakeClock())
    assert budget.describe() == {
        "policy": "retry_budget",
        "name": "orders",
        "ratio": 0.1,
        "min_per_second": 5.0,
        "ttl": 2.0,
    }
    assert repr(budget) == "RetryBudget(ratio=0.1, min_per_second=5.0, ttl=2.0, name='orders')"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, "'ratio' must be a finite number >= 0: -0.1"),
        ({"ratio": math.inf}, "'ratio' must be a finite number >= 0: inf"),
        ({"min_per_second": -1}, "'min_per_second' must be a finite number >= 0: -1"),
        ({"ttl": 0}, "'ttl' must be a finite number > 0: 0"),
        ({"ttl": math.nan}, "'ttl' must be a finite number > 0: nan"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float], message: str) -> None:
    """Bad settings raise ValueError naming the parameter and the value."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(") + "$"):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


def test_threads_keep_counts_exact() -> None:
    """8 threads depositing and withdrawing at once lose no deposit and overdraw nothing."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=10, ttl=10, clock=clock)
    per_thread = 20_000
    granted = [0] * 8
    start = threading.Barrier(8)

    def work(i: int) -> None:
        start.wait()
        for j in range(per_thread):
            budget.deposit()
            if j % 3 == 0 and budget.try_withdraw():
                granted[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = budget.snapshot()
    assert snap.deposits == 8 * per_thread
    assert snap.retries == sum(granted)
    total = sum(granted) + drain(budget)
    assert total == math.floor(0.2 * 8 * per_thread + 100)


def test_threads_depositing_across_bucket_edges_lose_nothing() -> None:
    """Deposits racing bucket rotations all land in some bucket of the window."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=0, ttl=10, clock=clock)
    made = [0] * 6
    done = threading.Event()

    def tick() -> None:
        while clock.now < 9.0:
            clock.advance(0.5)
            done.wait(0.001)
        done.set()

    def work(i: int) -> None:
        while not done.is_set():
            budget.deposit()
            made[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=tick))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now == 9.0  # crossed nine bucket edges, nothing has expired yet
    assert budget.snapshot().deposits == sum(made)


# -- model check ---------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.just(("deposit", 0.0)),
        st.just(("withdraw", 0.0)),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 3.0, 9.75, 25.0])),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=_ops,
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.5]),
    floor=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
)
def test_matches_a_simple_model(ops: list[tuple[str, float]], ratio: float, floor: float) -> None:
    """Every grant and refusal matches a list-based model of 10 one-second buckets."""
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=floor, ttl=10, clock=clock)
    events: list[tuple[int, str]] = []  # (bucket, kind), in a model with width 1.0

    for op, dt in ops:
        if op == "advance":
            clock.advance(dt)
            continue
        now_k = math.floor(clock.now)
        window = [kind for k, kind in events if k > now_k - 10]
        deposits = window.count("deposit")
        withdrawn = window.count("withdraw")
        if op == "deposit":
            budget.deposit()
            events.append((now_k, "deposit"))
        else:
            expected = withdrawn + 1 <= ratio * deposits + floor * 10 + 1e-9
            assert budget.try_withdraw() is expected
            if expected:
                events.append((now_k, "withdraw"))
    now_k = math.floor(clock.now)
    window = [kind for k, kind in events if k > now_k - 10]
    snap = budget.snapshot()
    assert (snap.deposits, snap.retries) == (window.count("deposit"), window.count("withdraw"))
