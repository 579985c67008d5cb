"""Build a pipeline's ``call`` and ``acall`` as one specialised function each.

A pipeline of timeout + retry + breaker + bulkhead must cost a successful call no more than a
peer library's breaker alone. Run through generic code, the checks for absent policies and the
attribute lookups cost more than the policies' own decisions, so the pipeline generates the
source of its ``call`` once, at construction, with only the steps it has and with every policy
and bound method pre-bound as a local name (the technique ``dataclasses`` and ``attrs`` use for
their ``__init__``). The generated code only calls the policies' public state machines and the
few hot-path attributes they expose to the pipeline; nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from interlink.errors import DeadlineExceeded, RejectedError
from interlink.resilience._watchdog import (
    PER_SECOND,
    _current_tasks,
    enter_task_deadline,
    settle_fired,
)
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.deadline import (
    _CURRENT,
    AT,
    BASE,
    FIRED,
    FLOOR,
    LOOP,
    TASK,
    THREAD,
    WATCHDOG,
    _Pair,
    enter_thread_deadline,
    expired,
    remaining,
    shrink_to,
)
from interlink.resilience.fallback import Fallback
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout

__all__ = ["build_call"]


class _Source:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 0

    def add(self, *lines: str) -> None:
        pad = "    " * self.depth
        self.lines.extend(pad + line for line in lines)

    def indent(self, line: str) -> None:
        self.add(line)
        self.depth += 1

    def dedent(self, n: int = 1) -> None:
        self.depth -= n


def _parent_deadline(timeout: Timeout) -> Callable[[_Pair, float], Any]:
    """The rare case: a deadline is already in force and is sooner, or on another clock."""

    def enter(parent: _Pair, now: float) -> Any:
        if parent[1] is timeout._clock:
            if parent[0] <= now:
                raise timeout.expired_error(started=False)
            return _CURRENT.set(parent)  # the caller's sooner deadline stays in force
        token = shrink_to(timeout.seconds, timeout._clock)
        if expired():
            _CURRENT.reset(token)
            raise timeout.expired_error(started=False)
        return token

    return enter


def _just_before(at: float) -> float:
    """The float just below ``at``: a call enforcing its inherited deadline marks itself in
    progress by holding ``AT`` below ``BASE``."""
    return math.nextafter(at, -math.inf)


def build_call(  # noqa: PLR0915 - one flat template reads best
    *,
    name: str,
    is_async: bool,
    fallback: Fallback | None,
    timeout: Timeout | None,
    retry: Retry | None,
    breaker: CircuitBreaker | None,
    rate_limiter: RateLimiter | None,
    bulkhead: Bulkhead | None,
    fn: Callable[..., Any] | None = None,
    task_deadline: bool = True,
) -> Callable[..., Any]:
    """Return ``call(fn, /, *args, **kwargs)`` (a coroutine function when ``is_async``) running
    the given policies in pipeline order; with ``fn`` given, ``call(*args, **kwargs)`` for that
    function (what ``@pipeline`` uses). Hedging pipelines use the hand-written async driver.

    A timeout on the monotonic clock keeps its deadline in the task's (for sync calls, the
    thread's) ``TaskDeadline`` (see ``_watchdog.py``); where that cannot serve, the call takes
    the per-call path, generated as well (``task_deadline=False``)."""
    aw = "await " if is_async else ""
    ns: dict[str, Any] = {"RejectedError": RejectedError, "fn": fn, "asyncio": asyncio}
    src = _Source()
    params = "*args, **kwargs" if fn is not None else "fn, /, *args, **kwargs"
    frames = task_deadline and timeout is not None and timeout._clock is time.monotonic
    src.indent(f"{'async def' if is_async else 'def'} call({params}):")
    if frames:
        assert timeout is not None  # for mypy: implied by frames
        ns.update(
            slow=build_call(
                name=name,
                is_async=is_async,
                fallback=fallback,
                timeout=timeout,
                retry=retry,
                breaker=breaker,
                rate_limiter=rate_limiter,
                bulkhead=bulkhead,
                fn=fn,
                task_deadline=False,
            ),
            cv_get=_CURRENT.get,
            get_ident=threading.get_ident,
        )
        slow_call = "slow(*args, **kwargs)" if fn is not None else "slow(fn, *args, **kwargs)"
        if is_async:  # the task's record: its own task and thread only
            ns.update(
                enter_frame=functools.partial(enter_task_deadline, timeout._watchdogs),
                current_task_of=_current_tasks.get,
            )
            owned = (
                f"frame[{TASK}] is current_task_of(frame[{LOOP}])"
                f" and frame[{THREAD}] == get_ident()"
            )
        else:  # the thread's record: a sync call cannot yield, so what else runs here nests
            ns["enter_frame"] = enter_thread_deadline
            owned = f"frame[{THREAD}] == get_ident()"
        src.add(
            "frame = cv_get()",
            f"if not (frame.__class__ is list and {owned}):",
            "    frame = enter_frame(frame)",
            "    if frame is None:",
            f"        return {aw}{slow_call}",
        )
    if fallback is not None:
        ns.update(
            recover=fallback.arecover if is_async else fallback.recover,
            remember=fallback.remember,
        )
        src.indent("try:")
    if frames:
        assert timeout is not None  # for mypy: implied by frames
        ns.update(tclock=timeout._clock, secs=timeout.seconds, timeout=timeout, before=_just_before)
        arm = (
            [f"    if frame[{FLOOR}] > at:", f"        frame[{WATCHDOG}].arm_frame(frame, at)"]
            if is_async
            else []
        )
        src.add(
            "now = tclock()",
            "at = now + secs",
            f"prev = frame[{AT}]",
            "if prev > at:",
            f"    frame[{AT}] = at",
            *arm,
            "elif prev <= now:",
            "    raise timeout.expired_error(started=False)",
        )
        if is_async:  # the inherited deadline is sooner: enforce it for this call
            src.add(f"elif prev == frame[{BASE}]:", f"    frame[{AT}] = at = before(prev)", *arm)
        src.indent("try:")
    elif timeout is not None:
        ns.update(
            tclock=timeout._clock,
            secs=timeout.seconds,
            cv_get=_CURRENT.get,
            cv_set=_CURRENT.set,
            cv_reset=_CURRENT.reset,
            enter_parent=_parent_deadline(timeout),
            remaining=remaining,
            timeout=timeout,
            DeadlineExceeded=DeadlineExceeded,
            get_ident=threading.get_ident,
            watchdogs=timeout._watchdogs,
            ceil=math.ceil,
            per_second=PER_SECOND,
            current_tasks=_current_tasks,
        )
        src.add(
            "now = tclock()",
            "at = now + secs",
            "parent = cv_get()",
            "if parent is None or (parent[1] is tclock and parent[0] > at):",
            "    token = cv_set((at, tclock))",
            *(["    left = secs"] if is_async else []),
            "else:",
            "    token = enter_parent(parent, now)",
            *(["    left = remaining()"] if is_async else []),
        )
        src.indent("try:")
        if is_async:
            # the task is cancelled at the deadline by a shared watchdog (see _watchdog.py)
            src.add(
                "tid = get_ident()",
                "wd = watchdogs.get(tid)",
                "if wd is None or getattr(wd._loop, '_thread_id', None) != tid:",
                "    wd = timeout.watchdog()",
                "task = current_tasks.get(wd._loop)",
                # the loop's clock is time.monotonic too (checked by the watchdog): reuse `now`
                "slot = int((now + left) * per_second) + 1"
                if timeout._clock is time.monotonic
                else "slot = ceil((wd.time() + left) * per_second)",
                "bucket = wd.buckets.get(slot) or wd.new_bucket(slot)",
                "seq = next(wd.seq)",
                "bucket[seq] = task",
            )
            src.indent("try:")
    budget = None if retry is None else retry.budget
    if budget is not None:
        ns["deposit"] = budget.deposit
        src.add("deposit()")
    if retry is None:
        _attempt(
            src,
            ns,
            is_async=is_async,
            breaker=breaker,
            rate_limiter=rate_limiter,
            bulkhead=bulkhead,
        )
    else:
        # the first attempt runs straight through; only a failure enters the retry loop,
        # generated as its own function below
        src.indent("try:")
        _attempt(
            src,
            ns,
            is_async=is_async,
            breaker=breaker,
            rate_limiter=rate_limiter,
            bulkhead=bulkhead,
        )
        src.dedent()
        src.add("except BaseException as exc:", f"    result = {aw}again(fn, args, kwargs, exc)")
    if frames and not is_async:
        src.dedent()
        src.add("finally:", f"    frame[{AT}] = prev")
    elif frames:
        ns["settle"] = settle_fired
        src.dedent()
        src.add(
            "except asyncio.CancelledError:",
            f"    if frame[{FIRED}]:",
            "        settle(frame, prev)",
            "        raise timeout.expired_error(started=True) from None",
            "    raise",
            "except BaseException:",
            f"    if frame[{FIRED}]:",
            "        settle(frame, prev)",
            "    raise",
            "finally:",
            f"    frame[{AT}] = prev",
            f"if frame[{FIRED}]:",
            "    settle(frame, prev)",
        )
    elif timeout is not None:
        if is_async:
            src.dedent()
            src.add(
                "except asyncio.CancelledError:",
                "    if bucket.pop(seq, None) is None and wd.fired(seq):",
                "        task.uncancel()",
                "        raise timeout.expired_error(started=True) from None",
                "    raise",
                "except BaseException:",
                "    if bucket.pop(seq, None) is None and wd.fired(seq):",
                "        task.uncancel()",
                "    raise",
                "if bucket.pop(seq, None) is None and wd.fired(seq):",
                "    task.uncancel()",
            )
        src.dedent()
        src.add("finally:", "    cv_reset(token)")
    if fallback is not None:
        src.dedent()
        src.add("except BaseException as exc:", f"    return {aw}recover(exc)", "remember(result)")
    src.add("return result")
    if retry is not None:
        ns.update(next_delay=retry.next_delay, rsleep=retry.asleep if is_async else retry.sleep)
        src.dedent(src.depth)
        src.indent(f"{'async def' if is_async else 'def'} again(fn, args, kwargs, exc):")
        src.add("attempt = 0", "delay = 0.0")
        src.indent("while True:")
        src.add("delay = next_delay(attempt, exc, delay)", f"{aw}rsleep(delay)", "attempt += 1")
        src.indent("try:")
        _attempt(
            src,
            ns,
            is_async=is_async,
            breaker=breaker,
            rate_limiter=rate_limiter,
            bulkhead=bulkhead,
        )
        src.dedent()
        src.add(
            "except BaseException as failed:", "    exc = failed", "    continue", "return result"
        )
    text = "\n".join(src.lines)
    code = compile(text, f"<interlink pipeline {name!r}>", "exec")
    exec(code, ns)
    call: Callable[..., Any] = ns["call"]
    call.__interlink_source__ = text  # type: ignore[attr-defined]
    return call


def _attempt(
    src: _Source,
    ns: dict[str, Any],
    *,
    is_async: bool,
    breaker: CircuitBreaker | None,
    rate_limiter: RateLimiter | None,
    bulkhead: Bulkhead | None,
) -> None:
    """One attempt through breaker, rate limiter and bulkhead; leaves the answer in ``result``."""
    aw = "await " if is_async else ""
    if breaker is not None:
        ns.update(breaker=breaker, bclock=breaker._clock, successes=breaker._succ_counter)
        src.add(
            "permit = breaker._g",
            "start = -1.0",
            "if permit & 15:",  # not the closed fast path: take a real permit, time the call
            "    permit = breaker.acquire()",
            "    start = bclock()",
        )
    if rate_limiter is not None or bulkhead is not None:
        src.indent("try:")
        if rate_limiter is not None:
            ns["limiter"] = rate_limiter
            if is_async:
                src.add(
                    "if not limiter.try_acquire():",
                    "    await limiter.aacquire(limiter.timeout)",
                )
            else:
                src.add("limiter.acquire(limiter.timeout)")
        if bulkhead is not None:
            ns.update(bulkhead=bulkhead, pop=bulkhead._free.pop, push=bulkhead._free.append)
            enter = "await bulkhead.aenter()" if is_async else "bulkhead.enter()"
            src.add("try:", "    pop()", "except IndexError:", f"    {enter}")
        src.dedent()
        src.add("except BaseException:")
        src.add("    breaker.release(permit)" if breaker is not None else "    pass")
        src.add("    raise")
    if breaker is not None:
        src.indent("try:")
    if bulkhead is not None:
        src.add(
            "try:",
            f"    result = {aw}fn(*args, **kwargs)",
            "finally:",
            "    push(None)",
            "    if bulkhead._waiters:",
            "        bulkhead._wake()",
        )
    else:
        src.add(f"result = {aw}fn(*args, **kwargs)")
    if breaker is not None:
        src.dedent()
        src.add(
            "except BaseException as exc:",
            "    breaker.on_error(permit, exc, None if start < 0 else bclock() - start)",
            "    raise",
            "if start < 0:",
            "    n = next(successes)",
            "    if not (n & breaker._mask):",
            "        breaker._tick_success(n + 1)",
            "else:",
            "    breaker.on_success(permit, bclock() - start)",
        )
