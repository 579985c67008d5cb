"""The script: steady load through the pipeline while the downstream changes, phase by phase."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from random import Random
from typing import Literal

from interlink.demo._caller import Answer, build_pipeline, request
from interlink.demo._downstream import Downstream
from interlink.demo._stats import DemoResult, PhaseRecorder, PhaseStats, Transition
from interlink.resilience.events import PolicyEvent, RetryGaveUp, RetryScheduled, StateChanged

__all__ = ["FAST", "NORMAL", "PHASES", "Phase", "Scenario", "Timing"]

SHUTDOWN_GRACE = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How long things take, in seconds; ``rate`` is calls started per second."""

    phase: float = 5.0
    cooldown: float = 2.0
    timeout: float = 0.2
    slow_delay: float = 2.0
    rate: float = 40.0


NORMAL = Timing()
FAST = Timing(phase=1.0, cooldown=0.3)


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the script: what the downstream does (``down``: its port is closed)."""

    name: str
    mode: Literal["healthy", "down", "slow"]


PHASES = (
    Phase("healthy", "healthy"),
    Phase("down", "down"),
    Phase("slow", "slow"),
    Phase("recovered", "healthy"),
)


class Scenario:
    """Runs ``PHASES`` against a real downstream and records what every caller got.

    Each call is counted in the phase it started in; attempts, retries and breaker transitions
    in the phase that was running when they happened.
    """

    def __init__(self, *, seed: int, timing: Timing = NORMAL) -> None:
        self.seed = seed
        self.timing = timing
        self.downstream = Downstream(rng=Random(seed + 1), slow_delay=timing.slow_delay)
        self.pipeline = build_pipeline(
            timeout=timing.timeout,
            cooldown=timing.cooldown,
            rng=Random(seed + 2),
            on_breaker=self._on_breaker,
            on_retry=self._on_retry,
        )
        self.recorders: list[PhaseRecorder] = []
        self.breaker_state = "closed"
        self.t0 = time.monotonic()
        self._arrivals = Random(seed)
        self._ids = itertools.count(1)
        self._calls: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        """Seconds since the scenario started."""
        return time.monotonic() - self.t0

    @property
    def current(self) -> PhaseRecorder:
        """The phase running now."""
        return self.recorders[-1]

    def snapshot(self) -> list[PhaseStats]:
        """Every phase so far, the running one up to now."""
        total = self.downstream.requests
        now = self.now()
        return [rec.freeze(total, now=now) for rec in self.recorders]

    async def run(self, on_phase: Callable[[Phase], None] | None = None) -> DemoResult:
        """Play every phase, wait for the last calls, and stop the downstream."""
        await self.downstream.start()
        self.t0 = time.monotonic()
        next_call = self.t0
        try:
            for index, phase in enumerate(PHASES):
                if self._calls:
                    # Calls still in flight finish under the conditions of the phase they
                    # started in (each is bounded by the timeout), so a phase's last calls are
                    # not counted against it when the downstream changes under them.
                    await asyncio.wait(set(self._calls), timeout=2 * self.timing.timeout)
                await self._switch(phase)
                self._begin(phase)
                if on_phase is not None:
                    on_phase(phase)
                next_call = await self._load(next_call, self.t0 + (index + 1) * self.timing.phase)
            self._end_current()
            # Calls still running are bounded by the timeout; let them land in their phase.
            await asyncio.gather(*self._calls)
        finally:
            for task in self._calls:
                task.cancel()
            await asyncio.gather(*self._calls, return_exceptions=True)
            await self.downstream.stop()
        total = self.downstream.requests
        return DemoResult(
            seed=self.seed,
            port=self.downstream.port,
            timeout=self.timing.timeout,
            slow_delay=self.timing.slow_delay,
            phases=tuple(rec.freeze(total) for rec in self.recorders),
            duration=self.now(),
        )

    # -- phases -------------------------------------------------------------------------------

    async def _switch(self, phase: Phase) -> None:
        if phase.mode == "down":
            # A clean shutdown: requests already read get their answer (a few ms), so the
            # healthy phase ends healthy; from then on every connect is refused.
            await self.downstream.stop(grace=SHUTDOWN_GRACE)
        else:
            await self.downstream.start(phase.mode)

    def _begin(self, phase: Phase) -> None:
        if self.recorders:
            self._end_current()
        self.recorders.append(
            PhaseRecorder(
                name=phase.name,
                started=self.now(),
                planned=self.timing.phase,
                reached_before=self.downstream.requests,
                breaker_state=self.breaker_state,
            )
        )

    def _end_current(self) -> None:
        rec = self.current
        rec.ended = self.now()
        rec.reached_after = self.downstream.requests
        rec.breaker_state = self.breaker_state

    async def _load(self, next_call: float, until: float) -> float:
        """Start calls at ``rate`` per second (jittered) until ``until``; the next start time."""
        mean_gap = 1.0 / self.timing.rate
        while next_call < until:
            wait = next_call - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(self._call(self.current))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
            next_call += mean_gap * self._arrivals.uniform(0.5, 1.5)
        wait = until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return next_call

    # -- one call -----------------------------------------------------------------------------

    async def _call(self, rec: PhaseRecorder) -> None:
        call_id = next(self._ids)
        start = time.monotonic()
        try:
            answer = await self.pipeline.acall(self._send, call_id)
        except Exception:
            rec.errors += 1
            rec.latencies.append(time.monotonic() - start)
            return
        latency = time.monotonic() - start
        rec.latencies.append(latency)
        if answer.call_id == call_id:
            rec.successes += 1
        else:
            rec.fallbacks += 1
            rec.fallback_latencies.append(latency)

    async def _send(self, call_id: int) -> Answer:
        self.current.sent += 1
        return await request(self.downstream.port, call_id)

    # -- listeners ----------------------------------------------------------------------------

    def _on_breaker(self, event: PolicyEvent) -> None:
        if isinstance(event, StateChanged) and self.recorders:
            self.current.transitions.append(Transition(event.at - self.t0, event.old, event.new))
            self.breaker_state = event.new

    def _on_retry(self, event: PolicyEvent) -> None:
        if not self.recorders:
            return
        if isinstance(event, RetryScheduled):
            self.current.retries += 1
        elif isinstance(event, RetryGaveUp) and event.reason == "budget":
            self.current.budget_refusals += 1
