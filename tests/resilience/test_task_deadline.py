"""The per-task deadline that async pipelines on the monotonic clock rewrite in place."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

import pytest

from interlink import DeadlineExceeded, Pipeline, Retry, Timeout, deadline, remaining
from interlink.resilience.deadline import _CURRENT


async def _left() -> float | None:
    return remaining()


def test_one_frame_serves_every_call_of_a_task() -> None:
    """The first call installs the task's frame; later calls reuse it and leave no deadline."""
    p = Pipeline(timeout=Timeout(5.0))

    async def main() -> None:
        assert await p.acall(_left) == pytest.approx(5.0, abs=0.05)
        frame = _CURRENT.get()
        assert isinstance(frame, list)
        assert await p.acall(_left) == pytest.approx(5.0, abs=0.05)
        assert _CURRENT.get() is frame
        assert remaining() is None

    asyncio.run(main())


def test_hung_call_is_cut_and_the_task_is_not_left_cancelled() -> None:
    """A call past its deadline raises DeadlineExceeded near the deadline; the task goes on."""
    p = Pipeline(timeout=Timeout(0.05))

    async def main() -> None:
        await p.acall(asyncio.sleep, 0)
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await p.acall(asyncio.sleep, 1)
        assert 0.04 < time.perf_counter() - start < 0.5
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0
        await asyncio.sleep(0.01)  # not cancelled afterwards

    asyncio.run(main())


def test_many_quick_calls_outlast_the_timeout_without_a_spurious_cut() -> None:
    """Calls that each finish in time never fire, however long the task keeps calling."""
    p = Pipeline(timeout=Timeout(0.03))

    async def main() -> int:
        done = 0
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            await p.acall(asyncio.sleep, 0.005)
            done += 1
        await asyncio.sleep(0.08)  # idle past every armed timer
        return done

    assert asyncio.run(main()) > 10


def test_inherited_deadline_is_enforced_for_the_call_only() -> None:
    """Under ``deadline()`` (which never cancels), a pipeline call is cut at the sooner
    inherited deadline; the block's own waiting is not."""
    p = Pipeline(timeout=Timeout(5.0))

    async def main() -> None:
        with deadline(0.05):
            await p.acall(asyncio.sleep, 0)
            start = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                await p.acall(asyncio.sleep, 1)
            assert time.perf_counter() - start < 0.5
            await asyncio.sleep(0.05)  # past the deadline, outside a call: not cancelled
        assert remaining() is None

    asyncio.run(main())


def test_nested_calls_keep_the_outer_deadline() -> None:
    """An inner pipeline with a longer timeout is cut at the outer one's deadline, and an outer
    call that survives an inner timeout is still cut at its own."""
    outer = Pipeline(timeout=Timeout(0.1))
    inner_long = Pipeline(timeout=Timeout(5.0))
    inner_short = Pipeline(timeout=Timeout(0.02))

    async def through_long() -> None:
        assert (remaining() or 0) <= 0.1
        await inner_long.acall(asyncio.sleep, 1)

    async def survive_short() -> None:
        with pytest.raises(DeadlineExceeded):
            await inner_short.acall(asyncio.sleep, 1)
        assert (remaining() or 0) > 0.03
        await asyncio.sleep(1)

    async def main() -> None:
        for body in (through_long, survive_short):
            start = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                await outer.acall(body)
            assert time.perf_counter() - start < 0.5

    asyncio.run(main())


def test_child_task_sees_the_deadline_and_gets_its_own_frame() -> None:
    """A task started inside a call inherits the deadline; its own pipeline calls are cut on
    their own and never cancel the parent."""
    p = Pipeline(timeout=Timeout(0.2))
    short = Pipeline(timeout=Timeout(0.02))

    async def child() -> float | None:
        left = remaining()
        with pytest.raises(DeadlineExceeded):
            await short.acall(asyncio.sleep, 1)
        return left

    async def parent() -> float | None:
        left = await asyncio.create_task(child())
        await asyncio.sleep(0.05)  # the child's timeout did not cut the parent
        return left

    async def main() -> None:
        assert await p.acall(parent) == pytest.approx(0.2, abs=0.05)

    asyncio.run(main())


def test_retries_run_inside_one_deadline() -> None:
    """Retries after a failure run inside the same timeout, which cancels the one that hangs."""
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        # two quick failures, then an attempt that hangs: only the pipeline's deadline ends it
        await asyncio.sleep(0.01 if calls < 3 else 30)
        raise OSError("down")

    p = Pipeline(timeout=Timeout(0.3), retry=Retry(10, backoff=0.001, max_backoff=0.001))

    async def main() -> None:
        start = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await p.acall(flaky)
        assert time.perf_counter() - start < 1.0

    asyncio.run(main())
    assert calls == 3


def test_tasks_with_frames_are_freed() -> None:
    """A frame refers to its task; finished tasks and their frames are still collected."""
    p = Pipeline(timeout=Timeout(5.0))

    async def one() -> None:
        await p.acall(asyncio.sleep, 0)

    async def main(n: int) -> None:
        for _ in range(n):
            await asyncio.gather(*(one() for _ in range(100)))

    asyncio.run(main(5))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    asyncio.run(main(50))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 1_000_000  # holding all 5,000 tasks would be over 5 MB


def test_sync_calls_share_one_record_per_thread() -> None:
    """Sync pipelines install the thread's record once and nest their deadlines in it."""
    outer = Pipeline(timeout=Timeout(0.5))
    inner = Pipeline(timeout=Timeout(5.0))

    def nested() -> float | None:
        return inner.call(remaining)

    assert outer.call(remaining) == pytest.approx(0.5, abs=0.05)
    frame = _CURRENT.get()
    assert isinstance(frame, list)
    assert outer.call(nested) == pytest.approx(0.5, abs=0.05)
    assert _CURRENT.get() is frame
    assert remaining() is None
    with deadline(0.2):
        assert inner.call(remaining) == pytest.approx(0.2, abs=0.05)
        assert remaining() == pytest.approx(0.2, abs=0.05)
    assert remaining() is None


def test_sync_call_under_a_passed_deadline_is_refused() -> None:
    """An inherited deadline that has passed refuses the call before it runs."""
    calls: list[int] = []
    p = Pipeline(timeout=Timeout(5.0))
    p.call(calls.append, 0)
    with deadline(0.0), pytest.raises(DeadlineExceeded):
        p.call(calls.append, 1)
    assert calls == [0]


def test_threads_never_see_each_others_deadlines() -> None:
    """Eight threads, each with its own timeout, read only their own deadline."""
    import threading

    seen: list[bool] = []

    def work(i: int) -> None:
        p = Pipeline(timeout=Timeout(i + 1.0))
        ok = True
        for _ in range(2000):
            left = p.call(remaining)
            ok = ok and left is not None and i + 0.5 < left <= i + 1.0
        ok = ok and remaining() is None
        seen.append(ok)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True] * 8


def test_sync_call_inside_an_async_call() -> None:
    """A sync pipeline called from inside an async one sees the sooner deadline, and leaves
    the task's record as it found it."""
    outer = Pipeline(timeout=Timeout(0.3))
    inner = Pipeline(timeout=Timeout(5.0))

    async def body() -> float | None:
        return inner.call(remaining)

    async def main() -> None:
        assert await outer.acall(body) == pytest.approx(0.3, abs=0.05)
        assert remaining() is None
        await asyncio.sleep(0.35)  # the async call's timer, if still armed, finds nothing to cut

    asyncio.run(main())
