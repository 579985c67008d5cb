"""Bulkhead: slot accounting, queueing, rejection, and real thread/task concurrency."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest
from support import until, wait_until

from interlink.errors import BulkheadFull, RejectedError
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.deadline import deadline
from interlink.resilience.events import BulkheadRejected, PolicyEvent
from interlink.testing import FakeClock


@pytest.fixture
def racy() -> Iterator[None]:
    """Switch threads as often as possible, to shake out races."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def hold(bulkhead: Bulkhead) -> tuple[threading.Thread, threading.Event]:
    """A thread that takes a slot and keeps it until the returned event is set."""
    release = threading.Event()
    t = threading.Thread(target=bulkhead.call, args=(release.wait,))
    t.start()
    return t, release


# -- configuration ------------------------------------------------------------------------------


def test_max_concurrent_must_be_positive() -> None:
    """A bulkhead without slots is refused, naming the parameter."""
    with pytest.raises(ValueError, match=r"^'max_concurrent' must be an integer >= 1: 0$"):
        Bulkhead(0)


def test_max_queue_must_not_be_negative() -> None:
    """A negative queue size is refused."""
    with pytest.raises(ValueError, match=r"^'max_queue' must be an integer >= 0: -1$"):
        Bulkhead(1, max_queue=-1)


def test_queue_timeout_must_not_be_negative() -> None:
    """A negative queue timeout is refused."""
    with pytest.raises(ValueError, match=r"^'queue_timeout' must be a finite number >= 0: -1$"):
        Bulkhead(1, max_queue=1, queue_timeout=-1)


def test_queue_with_default_timeout_waits_without_own_limit() -> None:
    """Bulkhead(n, max_queue=k) queues callers until a slot or their deadline, like Polly."""
    b = Bulkhead(1, max_queue=3)
    assert b.queue_timeout is None
    assert b.describe()["max_queue"] == 3


def test_wait_without_queue_is_refused() -> None:
    """A queue_timeout without a queue would never be used: a config error."""
    with pytest.raises(ValueError, match=r"^'queue_timeout' must be 0 when 'max_queue' is 0"):
        Bulkhead(1, queue_timeout=1.0)


def test_describe_lists_the_configuration() -> None:
    """describe() is the configuration, stable for pipeline tests."""
    b = Bulkhead(3, max_queue=2, queue_timeout=None, name="menu")
    assert b.describe() == {
        "policy": "bulkhead",
        "name": "menu",
        "max_concurrent": 3,
        "max_queue": 2,
        "queue_timeout": None,
    }


# -- primitives ---------------------------------------------------------------------------------


def test_try_enter_takes_free_slots_then_refuses() -> None:
    """try_enter succeeds max_concurrent times, then returns False without raising."""
    b = Bulkhead(2)
    assert [b.try_enter(), b.try_enter(), b.try_enter()] == [True, True, False]
    assert (b.running, b.available) == (2, 0)


def test_leave_returns_the_slot() -> None:
    """A slot given back can be taken again."""
    b = Bulkhead(1)
    assert b.try_enter()
    b.leave()
    assert (b.running, b.available) == (0, 1)
    assert b.try_enter()


def test_try_enter_emits_nothing() -> None:
    """try_enter is a probe: a refusal is not an event."""
    seen: list[PolicyEvent] = []
    b = Bulkhead(1, listeners=[seen.append])
    b.try_enter()
    assert not b.try_enter()
    assert seen == []


def test_full_without_queue_raises_bulkhead_full() -> None:
    """With every slot taken and no queue, enter() raises BulkheadFull with the numbers."""
    b = Bulkhead(2, name="payments")
    b.enter()
    b.enter()
    with pytest.raises(BulkheadFull) as info:
        b.enter()
    err = info.value
    assert isinstance(err, RejectedError)
    assert (err.name, err.max_concurrent, err.max_queue) == ("payments", 2, 0)
    assert str(err) == "bulkhead 'payments' is full: 2 calls running and 0 queued"


def test_rejection_emits_bulkhead_rejected() -> None:
    """Listeners see who was rejected, when, and how busy the bulkhead was."""
    clock = FakeClock(5.0)
    seen: list[PolicyEvent] = []
    b = Bulkhead(1, name="b", clock=clock, listeners=[seen.append])
    b.enter()
    with pytest.raises(BulkheadFull):
        b.enter()
    assert seen == [BulkheadRejected(kind="bulkhead", name="b", at=5.0, running=1, queued=0)]


# -- drivers ------------------------------------------------------------------------------------


def test_call_returns_the_result_and_frees_the_slot() -> None:
    """call() passes arguments through and gives the slot back."""
    b = Bulkhead(1)
    assert b.call(lambda a, b: a * b, 6, b=7) == 42
    assert b.running == 0


def test_call_frees_the_slot_on_error() -> None:
    """An exception in the call still returns the slot."""
    b = Bulkhead(1)
    with pytest.raises(ZeroDivisionError):
        b.call(lambda: 1 / 0)
    assert b.available == 1


def test_acall_frees_the_slot_on_error() -> None:
    """An exception in an async call still returns the slot."""
    b = Bulkhead(1)

    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        asyncio.run(b.acall(boom))
    assert b.available == 1


def test_decorates_def_and_async_def() -> None:
    """@bulkhead keeps the function's kind and name, and holds a slot during the call."""
    b = Bulkhead(1)

    @b
    def sync(x: int) -> int:
        """Doc."""
        return x + b.running

    @b
    async def asy(x: int) -> int:
        return x + b.running

    assert (sync(1), sync.__name__, sync.__doc__) == (2, "sync", "Doc.")
    assert asyncio.iscoroutinefunction(asy)
    assert asyncio.run(asy(10)) == 11
    assert b.running == 0


def test_context_managers_hold_a_slot() -> None:
    """with / async with take a slot for the block."""
    b = Bulkhead(1)
    with b:
        assert b.running == 1

    async def main() -> None:
        async with b:
            assert b.running == 1

    asyncio.run(main())
    assert b.running == 0


# -- queueing (threads) -------------------------------------------------------------------------


def test_queued_thread_runs_when_a_slot_frees() -> None:
    """A queued caller waits, then gets the slot the running call gives back."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    holder, release = hold(b)
    wait_until(lambda: b.running == 1)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(b.call(lambda: b.running)))
    waiter.start()
    wait_until(lambda: b.queued == 1)
    release.set()
    holder.join(2)
    waiter.join(2)
    assert got == [1]
    assert (b.running, b.queued) == (0, 0)


def test_queue_full_rejects_at_once() -> None:
    """Beyond max_queue waiters, a caller is rejected without waiting."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None, name="q")
    holder, release = hold(b)
    wait_until(lambda: b.running == 1)
    waiter = threading.Thread(target=b.call, args=(lambda: None,))
    waiter.start()
    wait_until(lambda: b.queued == 1)
    with pytest.raises(BulkheadFull, match=r"^bulkhead 'q' is full: 1 call running and 1 queued$"):
        b.enter()
    release.set()
    holder.join(2)
    waiter.join(2)
    assert (b.running, b.queued, b.available) == (0, 0, 1)


def test_queue_timeout_raises_bulkhead_full() -> None:
    """A queued caller gives up after queue_timeout and leaves the queue."""
    b = Bulkhead(1, max_queue=1, queue_timeout=0.01, name="slow")
    b.enter()
    started = time.monotonic()
    with pytest.raises(
        BulkheadFull, match=r"^bulkhead 'slow' is full: 1 call running and 1 queued"
    ):
        b.enter()
    assert time.monotonic() - started >= 0.008
    assert (b.running, b.queued) == (1, 0)


def test_enter_timeout_shortens_the_wait() -> None:
    """enter(timeout=...) caps an unlimited queue wait."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    b.enter()
    with pytest.raises(BulkheadFull):
        b.enter(timeout=0.005)
    assert b.queued == 0


def test_zero_timeout_does_not_queue() -> None:
    """enter(timeout=0) refuses at once even with room in the queue."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    b.enter()
    with pytest.raises(BulkheadFull):
        b.enter(timeout=0)


def test_deadline_caps_the_wait() -> None:
    """A queued caller never waits past the current deadline."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    b.enter()
    with deadline(0.005), pytest.raises(BulkheadFull):
        b.enter()
    assert b.queued == 0


def test_queued_threads_are_served_in_arrival_order() -> None:
    """Freed slots go to the longest-waiting caller first."""
    b = Bulkhead(1, max_queue=3, queue_timeout=None)
    b.enter()
    order: list[int] = []
    threads = []
    for i in range(3):
        t = threading.Thread(target=b.call, args=(order.append, i))
        t.start()
        threads.append(t)
        wait_until(lambda: b.queued == len(threads))
    b.leave()
    for t in threads:
        t.join(2)
    assert order == [0, 1, 2]


class RacingDeque(deque[None]):
    """Free-slot deque that runs ``hook`` inside its ``nth`` failing pop: a scripted race."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.nth = nth
        self.hook: Callable[[], None] | None = None

    def pop(self) -> None:  # type: ignore[override]  # deque.pop takes no index
        if self:
            return super().pop()
        self.nth -= 1
        if self.nth == 0 and self.hook is not None:
            self.hook()
        raise IndexError("pop from an empty deque")


def test_slot_freed_while_registering_is_not_lost() -> None:
    """A leave() landing between a waiter's failed pop and its registration still serves it."""
    b = Bulkhead(1, max_queue=1, queue_timeout=0.5)
    racing = RacingDeque(nth=2)  # 1: fast path, 2: the pop under the lock before registering
    b._free = racing  # white-box: script the interleaving
    racing.hook = b.leave  # the running call leaves right there; nobody is queued yet
    started = time.monotonic()
    b.enter()
    assert time.monotonic() - started < 0.25  # served by the re-check, not by a timeout
    assert (b.running, b.queued) == (1, 0)


def test_never_exceeds_max_concurrent_under_16_threads(racy: None) -> None:
    """16 threads hammering a 4-slot bulkhead never run more than 4 calls at once."""
    b = Bulkhead(4, max_queue=16, queue_timeout=None)
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def work() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.0002)
        with lock:
            active[0] -= 1

    def loop() -> None:
        for _ in range(50):
            b.call(work)

    threads = [threading.Thread(target=loop) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == 4
    assert (b.running, b.queued, b.available) == (0, 0, 4)


def test_no_lost_wakeups_with_one_slot(racy: None) -> None:
    """Threads racing enter/leave on one slot with unlimited waits all finish."""
    b = Bulkhead(1, max_queue=8, queue_timeout=None)
    done = [0]

    def loop() -> None:
        for _ in range(300):
            b.enter()
            done[0] += 1  # only one thread at a time, so this is safe
            b.leave()

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert done[0] == 2400
    assert (b.running, b.queued, b.available) == (0, 0, 1)


def test_slot_accounting_exact_after_stress_with_timeouts(racy: None) -> None:
    """Mixed successes, rejections and timeouts leave every slot back and nobody queued."""
    b = Bulkhead(3, max_queue=4, queue_timeout=0.002)
    outcomes = {"ok": 0, "full": 0}
    lock = threading.Lock()

    def loop() -> None:
        for _ in range(100):
            try:
                b.call(time.sleep, 0.0001)
                key = "ok"
            except BulkheadFull:
                key = "full"
            with lock:
                outcomes[key] += 1

    threads = [threading.Thread(target=loop) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert outcomes["ok"] + outcomes["full"] == 1200
    assert outcomes["ok"] > 0
    assert (b.running, b.queued, b.available) == (0, 0, 3)


# -- queueing (tasks) ---------------------------------------------------------------------------


def test_never_exceeds_max_concurrent_under_100_tasks() -> None:
    """100 tasks through a 5-slot bulkhead: at most 5 inside, all complete, all slots back."""
    b = Bulkhead(5, max_queue=100, queue_timeout=None)
    active = 0
    peak = 0

    async def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(3):
            await asyncio.sleep(0)
        active -= 1
        return i

    async def main() -> list[int]:
        return await asyncio.gather(*(b.acall(work, i) for i in range(100)))

    assert asyncio.run(main()) == list(range(100))
    assert peak == 5
    assert (b.running, b.queued, b.available) == (0, 0, 5)


def test_async_queue_timeout_raises_bulkhead_full() -> None:
    """A queued task gives up after queue_timeout and leaves the queue."""
    b = Bulkhead(1, max_queue=1, queue_timeout=0.005, name="a")

    async def main() -> None:
        await b.aenter()
        with pytest.raises(BulkheadFull, match=r"^bulkhead 'a' is full"):
            await b.aenter()
        assert b.queued == 0
        b.leave()

    asyncio.run(main())
    assert b.available == 1


def test_async_queue_full_rejects_and_emits() -> None:
    """A task beyond max_queue is rejected at once and listeners hear of it."""
    seen: list[PolicyEvent] = []
    b = Bulkhead(1, max_queue=1, queue_timeout=None, listeners=[seen.append])

    async def main() -> None:
        await b.aenter()
        queued = asyncio.create_task(b.aenter())
        await until(lambda: b.queued == 1)
        with pytest.raises(BulkheadFull):
            await b.aenter()
        b.leave()
        await queued
        b.leave()

    asyncio.run(main())
    assert [(e.running, e.queued) for e in seen if isinstance(e, BulkheadRejected)] == [(1, 1)]
    assert (b.running, b.queued) == (0, 0)


def test_cancelled_async_waiter_does_not_leak() -> None:
    """Cancelling a queued task removes it from the queue and takes no slot."""
    b = Bulkhead(1, max_queue=2, queue_timeout=None)

    async def main() -> None:
        await b.aenter()
        waiter = asyncio.create_task(b.aenter())
        await until(lambda: b.queued == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert b.queued == 0
        b.leave()

    asyncio.run(main())
    assert (b.running, b.queued, b.available) == (0, 0, 1)


def test_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    """A waiter cancelled after being handed a slot passes it to the next waiter."""
    b = Bulkhead(1, max_queue=2, queue_timeout=None)

    async def main() -> None:
        await b.aenter()
        first = asyncio.create_task(b.aenter())
        await until(lambda: b.queued == 1)
        second = asyncio.create_task(b.aenter())
        await until(lambda: b.queued == 2)
        b.leave()  # hands the slot to `first`, whose wake-up is only scheduled ...
        first.cancel()  # ... and is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)
        assert (b.running, b.queued) == (1, 0)
        b.leave()

    asyncio.run(main())
    assert (b.running, b.available) == (0, 1)


def test_cancellation_stress_leaves_exact_accounting() -> None:
    """Many tasks, a third of them cancelled while queued or running: all slots come back."""
    b = Bulkhead(3, max_queue=200, queue_timeout=None)

    async def work() -> None:
        for _ in range(2):
            await asyncio.sleep(0)

    async def main() -> None:
        tasks = [asyncio.create_task(b.acall(work)) for _ in range(150)]
        for _ in range(3):
            await asyncio.sleep(0)
        for t in tasks[::3]:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert 0 < cancelled <= 50

    asyncio.run(main())
    assert (b.running, b.queued, b.available) == (0, 0, 3)


# -- threads and tasks together -----------------------------------------------------------------


def test_thread_leave_wakes_a_task() -> None:
    """A slot freed by a thread wakes a task queued on an event loop."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    holder, release = hold(b)
    wait_until(lambda: b.running == 1)

    async def main() -> int:
        async def inside() -> int:
            return b.running

        task = asyncio.create_task(b.acall(inside))
        await until(lambda: b.queued == 1)
        release.set()
        return await asyncio.wait_for(task, 2)

    assert asyncio.run(main()) == 1
    holder.join(2)
    assert (b.running, b.available) == (0, 1)


def test_task_leave_wakes_a_thread() -> None:
    """A slot freed by a task wakes a thread queued on the same bulkhead."""
    b = Bulkhead(1, max_queue=1, queue_timeout=None)
    ran = threading.Event()

    async def main() -> None:
        await b.aenter()
        t = threading.Thread(target=b.call, args=(ran.set,))
        t.start()
        await until(lambda: b.queued == 1)
        b.leave()
        await asyncio.to_thread(t.join, 2)

    asyncio.run(main())
    assert ran.is_set()
    assert (b.running, b.available) == (0, 1)


def test_threads_and_loops_share_one_bulkhead(racy: None) -> None:
    """Four threads and two event loops of 20 tasks never exceed 2 slots together."""
    b = Bulkhead(2, max_queue=64, queue_timeout=None)
    lock = threading.Lock()
    active = [0]
    peak = [0]

    def enter_work() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])

    def exit_work() -> None:
        with lock:
            active[0] -= 1

    def sync_work() -> None:
        enter_work()
        time.sleep(0.0001)
        exit_work()

    async def async_work() -> None:
        enter_work()
        await asyncio.sleep(0.0001)
        exit_work()

    def thread_loop() -> None:
        for _ in range(40):
            b.call(sync_work)

    def loop_thread() -> None:
        async def main() -> None:
            await asyncio.gather(*(b.acall(async_work) for _ in range(20)))

        asyncio.run(main())

    threads = [threading.Thread(target=thread_loop) for _ in range(4)]
    threads += [threading.Thread(target=loop_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] <= 2
    assert (b.running, b.queued, b.available) == (0, 0, 2)
