"""Build a pipeline's sync ``call`` as one specialised function.

A pipeline of timeout + retry + breaker + bulkhead must cost a successful call no more than a
peer library's breaker alone. Run through generic code, the checks for absent policies and the
attribute lookups cost more than the policies' own decisions, so the pipeline generates the
source of its ``call`` once, at construction, with only the steps it has and with every policy
and bound method pre-bound as a local name (the technique ``dataclasses`` and ``attrs`` use for
their ``__init__``). The generated code only calls the policies' public state machines and the
few hot-path attributes they expose to the pipeline; nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from interlink.errors import DeadlineExceeded, RejectedError
from interlink.resilience.breaker import CircuitBreaker
from interlink.resilience.bulkhead import Bulkhead
from interlink.resilience.deadline import _CURRENT, _Pair, expired, shrink_to
from interlink.resilience.fallback import Fallback
from interlink.resilience.ratelimit import RateLimiter
from interlink.resilience.retry import Retry
from interlink.resilience.timeout import Timeout

__all__ = ["build_sync_call"]


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
                raise DeadlineExceeded(
                    f"'{timeout.name}' had no time left to start", timeout.seconds
                )
            return _CURRENT.set(parent)  # the caller's sooner deadline stays in force
        token = shrink_to(timeout.seconds, timeout._clock)
        if expired():
            _CURRENT.reset(token)
            raise DeadlineExceeded(f"'{timeout.name}' had no time left to start", timeout.seconds)
        return token

    return enter


def build_sync_call(  # noqa: PLR0915 - one flat template reads best
    *,
    name: str,
    fallback: Fallback | None,
    timeout: Timeout | None,
    retry: Retry | None,
    breaker: CircuitBreaker | None,
    rate_limiter: RateLimiter | None,
    bulkhead: Bulkhead | None,
    fn: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """Return ``call(fn, /, *args, **kwargs)`` running the given policies in pipeline order;
    with ``fn`` given, ``call(*args, **kwargs)`` for that function (what ``@pipeline`` uses)."""
    ns: dict[str, Any] = {"RejectedError": RejectedError, "fn": fn}
    src = _Source()
    src.indent(
        "def call(*args, **kwargs):" if fn is not None else "def call(fn, /, *args, **kwargs):"
    )
    if fallback is not None:
        ns.update(recover=fallback.recover, remember=fallback.remember)
        src.indent("try:")
    if timeout is not None:
        ns.update(
            tclock=timeout._clock,
            secs=timeout.seconds,
            cv_get=_CURRENT.get,
            cv_set=_CURRENT.set,
            cv_reset=_CURRENT.reset,
            enter_parent=_parent_deadline(timeout),
        )
        src.add(
            "now = tclock()",
            "parent = cv_get()",
            "if parent is None or (parent[1] is tclock and parent[0] > now + secs):",
            "    token = cv_set((now + secs, tclock))",
            "else:",
            "    token = enter_parent(parent, now)",
        )
        src.indent("try:")
    budget = None if retry is None else retry.budget
    if budget is not None:
        ns["deposit"] = budget.deposit
        src.add("deposit()")
    if retry is not None:
        ns.update(next_delay=retry.next_delay, rsleep=retry.sleep)
        src.add("attempt = 0", "delay = 0.0")
        src.indent("while True:")
        src.indent("try:")
    if breaker is not None:
        ns.update(breaker=breaker, bclock=breaker._clock, succ=breaker._succ)
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
            ns.update(limit=rate_limiter.acquire, limiter=rate_limiter)
            src.add("limit(limiter.timeout)")
        if bulkhead is not None:
            ns.update(bulkhead=bulkhead, pop=bulkhead._free.pop, push=bulkhead._free.append)
            src.add("try:", "    pop()", "except IndexError:", "    bulkhead.enter()")
        src.dedent()
        src.add("except RejectedError:")
        src.add("    breaker.release(permit)" if breaker is not None else "    pass")
        src.add("    raise")
    if breaker is not None:
        src.indent("try:")
    if bulkhead is not None:
        src.add(
            "try:",
            "    result = fn(*args, **kwargs)",
            "finally:",
            "    push(None)",
            "    if bulkhead._waiters:",
            "        bulkhead._wake()",
        )
    else:
        src.add("result = fn(*args, **kwargs)")
    if breaker is not None:
        src.dedent()
        src.add(
            "except BaseException as exc:",
            "    breaker.on_error(permit, exc, None if start < 0 else bclock() - start)",
            "    raise",
            "if start < 0:",
            "    n = succ()",
            "    if not (n & breaker._mask):",
            "        breaker._tick_success(n + 1)",
            "else:",
            "    breaker.on_success(permit, bclock() - start)",
        )
    if retry is not None:
        src.dedent()
        src.add(
            "except BaseException as exc:",
            "    delay = next_delay(attempt, exc, delay)",
            "    rsleep(delay)",
            "    attempt += 1",
            "    continue",
            "break",
        )
        src.dedent()
    if timeout is not None:
        src.dedent()
        src.add("finally:", "    cv_reset(token)")
    if fallback is not None:
        src.dedent()
        src.add("except BaseException as exc:", "    return recover(exc)", "remember(result)")
    src.add("return result")
    code = compile("\n".join(src.lines), f"<interlink pipeline {name!r}>", "exec")
    exec(code, ns)
    call: Callable[..., Any] = ns["call"]
    call.__interlink_source__ = "\n".join(src.lines)  # type: ignore[attr-defined]
    return call
