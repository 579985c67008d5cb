"""Driving one claimed saga to its next resting point (finished, parked, or a long backoff).

The loop: ``decide`` -> persist the new state with a write fenced by owner and version ->
carry out the command -> turn its outcome into an event -> ``decide`` again. The state is on
disk before the action it announces starts, so after a crash the next owner knows which attempt
may have half happened and runs it again under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from interlink.clock import Clock
from interlink.outbox.sink import Sink
from interlink.saga._runner import ReplyBox, reply_says_ok, run_attempt
from interlink.saga._trace import step_span
from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.definition import SagaDefinition, Send, StepContext
from interlink.saga.errors import InvalidReply, OwnershipLost, SagaError, StepFailed
from interlink.saga.state import (
    ActionFailed,
    ActionSucceeded,
    CompensationFailed,
    CompensationSucceeded,
    Decision,
    Event,
    LateSuccess,
    Park,
    RunAction,
    RunCompensation,
    SagaState,
    SagaStatus,
    Sleep,
    StepStatus,
    Stop,
    Wake,
    decide,
)
from interlink.saga.stores import SagaRow, SagaStore, SagaWrite
from interlink.tracing.spans import Spans

__all__ = ["Driver", "Started", "error_text"]

log = logging.getLogger("interlink.saga")

_ERROR_CHARS = 500
# A step in one of these states was given up on: a success reply for it is late news.
_GAVE_UP = frozenset({StepStatus.FAILED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def error_text(exc: BaseException) -> str:
    """``Type: message``, cut to a size that fits a row and a terminal."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text.replace("\x00", "\\x00")  # a text column on PostgreSQL refuses NUL
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


@dataclass(frozen=True, slots=True)
class Started:
    """A saga ``Orchestrator.start`` persisted with its first attempt already in flight."""

    state: SagaState
    command: RunAction
    data: Any


@dataclass(frozen=True, slots=True)
class Driver:
    """What driving needs, shared by every saga an orchestrator runs."""

    store: SagaStore
    owner: str
    definitions: Mapping[str, SagaDefinition]
    publisher: Sink | None
    replies: ReplyBox
    clock: Clock
    hold: float  # backoffs up to this long are waited out while holding the saga
    spans: Spans = field(default_factory=lambda: Spans(name="interlink.saga"))
    # Sagas whose lease this process is giving up on purpose (finished, parked, a long
    # backoff): a renewal that misses them lost nothing.
    letting_go: set[str] = field(default_factory=set)

    async def drive(self, row: SagaRow, started: Started | None = None) -> None:
        """Drive the saga of ``row`` (claimed by ``owner``) until it needs nothing now.
        ``started``: the first decision, already persisted by ``Orchestrator.start``."""
        try:
            await self._drive(row, started)
        except OwnershipLost:
            log.warning("saga %s: lost ownership; another orchestrator has it", row.saga_id)
        except Exception as exc:
            # Most likely the store is unreachable: leave the saga to its lease, which runs
            # out and lets whoever can reach the store take it over.
            log.warning("saga %s: stopped driving: %s", row.saga_id, error_text(exc))

    async def _load(self, row: SagaRow) -> tuple[SagaState, Any, Event] | None:
        sid = row.saga_id
        try:
            state = state_from_json(sid, row.state, row.version)
            if state.name != row.name or state.saga_id != sid:
                raise SagaError(f"stored state of saga {sid!r} belongs to another saga")
        except Exception as exc:  # whatever a damaged row raises: park it, never loop on it
            error = str(exc) if isinstance(exc, SagaError) else error_text(exc)
            log.error("saga %s parked: %s", sid, error)
            self.letting_go.add(sid)
            await self.store.park(sid, error=error, owner=self.owner, now=self.clock())
            return None
        definition = self.definitions[row.name]
        try:
            return state, definition.validate(state.data), Wake(self.clock())
        except Exception as exc:
            model = getattr(definition.data_model, "__name__", repr(definition.data_model))
            error = f"data no longer validates as {model}: {error_text(exc)}"
            return state, state.data, Park(self.clock(), error)

    async def _drive(self, row: SagaRow, started: Started | None) -> None:
        sid = row.saga_id
        definition = self.definitions[row.name]
        stored_status = row.status  # the status column, which claims and queries go by
        if started is not None:
            state, data, first = started.state, started.data, started.command
            event = await self._attempt(definition, state, first, data)
        else:
            loaded = await self._load(row)
            if loaded is None:  # parked as unreadable: a person looks at it, replies and all
                if row.late:
                    await self.store.forget_late(sid, row.late)
                return
            state, data, event = loaded
        late: list[str] = []  # slots of late success replies this run deals with
        if row.late and isinstance(event, Wake):
            event, late = await self._late_news(state, definition, event)
        while True:
            try:
                decision = decide(state, event, definition.shape)
            except Exception as exc:  # a state the machine cannot continue from
                error = f"cannot continue from the stored state: {error_text(exc)}"
                log.error("saga %s parked: %s", sid, error)
                self.letting_go.add(sid)
                await self.store.park(sid, error=error, owner=self.owner, now=self.clock())
                return
            command = decision.command
            # A status column that disagrees with the state (a row edited by hand) is rewritten
            # too, or a finished saga would be claimed again and again.
            changed = decision.state is not state or decision.state.status.value != stored_status
            now = self.clock()
            let_go_at = self._let_go_at(decision, now)
            if let_go_at is not None:  # one write: the new state and the release together
                self.letting_go.add(sid)
                if changed:
                    await self._persist(state, decision.state, release_at=let_go_at)
                else:
                    await self.store.release(sid, owner=self.owner, wake_at=let_go_at)
                if row.late:
                    await self._settle_late(sid, late, row.late)
                return
            if changed:
                state = await self._persist(state, decision.state)
                stored_status = state.status.value
            if row.late:  # dealt with now that the news is on disk: let it go
                await self._settle_late(sid, late, row.late)
                row = replace(row, late=0)
            if isinstance(command, Sleep):
                await asyncio.sleep(max(command.until - now, 0.0))
                event = Wake(self.clock())
                continue
            assert not isinstance(command, Stop)
            event = await self._attempt(definition, state, command, data)

    def _let_go_at(self, decision: Decision, now: float) -> float | None:
        """When the saga is due again if this process should let go of it now: it stopped,
        or waits longer than ``hold`` (the slot is freed and anyone may resume it)."""
        command, state = decision.command, decision.state
        if isinstance(command, Stop):
            if command.status is SagaStatus.NEEDS_ATTENTION:
                log.error("saga %s needs attention: %s", state.saga_id, state.error)
            return now
        if isinstance(command, Sleep) and command.until - now > self.hold:
            if state.status is SagaStatus.RUNNING and state.deadline_at:
                return min(command.until, state.deadline_at)
            return command.until
        return None

    async def _late_news(
        self, state: SagaState, definition: SagaDefinition, wake: Wake
    ) -> tuple[Event, list[str]]:
        """The success replies kept for steps this saga gave up on (timed out, failed,
        compensated): as one ``LateSuccess`` event, with their reply slots."""
        indices: list[int] = []
        slots: list[str] = []
        for index, step in enumerate(state.steps):
            if step.in_flight or step.status not in _GAVE_UP:
                continue
            if not isinstance(definition.steps[index].action, Send):
                continue
            kept = await self.store.get_reply(state.saga_id, step.name)
            if kept is not None and reply_says_ok(kept[1]):
                indices.append(index)
                slots.append(step.name)
                log.warning(
                    "saga %s: step %r succeeded after the saga gave up on it (%s): %s",
                    state.saga_id,
                    step.name,
                    step.status,
                    "undoing it again" if definition.steps[index].compensation else "parking",
                )
        if not indices:
            return wake, []
        return LateSuccess(wake.at, tuple(indices)), slots

    async def _settle_late(self, saga_id: str, slots: list[str], count: int) -> None:
        for slot in slots:  # handled: a later claim must not act on them again
            await self.store.clear_reply(saga_id, slot)
        await self.store.forget_late(saga_id, count)

    async def _persist(
        self, old: SagaState, new: SagaState, *, release_at: float | None = None
    ) -> SagaState:
        write = SagaWrite(
            state=state_to_json(new),
            status=new.status.value,
            wake_at=self.clock() if release_at is None else release_at,
            updated_at=new.updated_at,
            error=new.error,
        )
        saved = await self.store.save(
            old.saga_id,
            write,
            owner=self.owner,
            version=old.version,
            release=release_at is not None,
        )
        if not saved:
            raise OwnershipLost(old.saga_id)
        return replace(new, version=old.version + 1)

    async def _attempt(
        self,
        definition: SagaDefinition,
        state: SagaState,
        command: RunAction | RunCompensation,
        data: Any,
    ) -> Event:
        compensating = isinstance(command, RunCompensation)
        step = definition.steps[command.index]
        progress = state.steps[command.index]
        ctx = StepContext(
            saga_id=state.saga_id,
            saga=state.name,
            step=step.name,
            attempt=command.attempt,
            idempotency_key=command.idempotency_key,
            data=data,
            results=state.results,
            compensating=compensating,
        )
        seconds = step.timeout
        if not compensating and state.deadline_at is not None:
            left = max(state.deadline_at - self.clock(), 0.001)
            seconds = left if seconds is None else min(seconds, left)
        try:
            with step_span(self.spans, state.trace, ctx):  # a failed attempt marks it failed
                result = await run_attempt(
                    step,
                    ctx,
                    seconds=seconds,
                    publisher=self.publisher,
                    replies=self.replies,
                )
        except InvalidReply as exc:
            return Park(self.clock(), str(exc))
        except Exception as exc:
            retry = definition.retry_of(step, compensating=compensating)
            retry_in: float | None = None
            if not isinstance(exc, StepFailed):  # a refusal is final, whatever the policy
                with contextlib.suppress(Exception):
                    # The core Retry decides: a delay, or (by raising) give up.
                    retry_in = retry.next_delay(progress.failures, exc, progress.last_delay)
            at, error = self.clock(), error_text(exc)
            if compensating:
                return CompensationFailed(command.index, at, error, retry_in)
            return ActionFailed(command.index, at, error, retry_in)
        if compensating:
            return CompensationSucceeded(command.index, self.clock())
        return ActionSucceeded(command.index, self.clock(), result)
