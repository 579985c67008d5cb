"""The orchestrator: claims sagas from the store and drives each through the state machine.

Ownership is a lease on the saga's row. An orchestrator renews the leases of the sagas it drives
every ``lease / 3`` seconds; a saga whose lease it lost (or could not renew in time) is cancelled
mid-attempt before anyone else may claim it, so two orchestrators never run the same step at
once, and every write it makes is fenced by owner and version, so a late one changes nothing.
On start an orchestrator takes the lock of its ``owner`` name (the store's: a file lock, an
advisory lock; dropped when the process dies) and then takes back every active saga held under
that name, so a restart after ``kill -9`` need not wait for the leases to expire; then it claims
whatever is due and free. The default name is stable, the service and the host
(``default_owner``); when a live process holds it already, the newcomer runs under a name of
its own and leaves that process's sagas alone. Rows carry the name plus this process's
incarnation, so writes of an earlier process of the same name are fenced off too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from interlink._closing import AsyncOpening
from interlink.clock import Clock
from interlink.messaging.envelope import Envelope
from interlink.outbox.sink import Sink
from interlink.resilience._validate import positive, positive_int
from interlink.saga._driver import Driver, Started, error_text
from interlink.saga._runner import (
    COMPENSATION_SLOT,
    SAGA_ATTEMPT,
    SAGA_ID,
    SAGA_STEP,
    ReplyBox,
    reply_says_ok,
)
from interlink.saga._trace import root_context
from interlink.saga.admin import load_saga, resume_saga
from interlink.saga.codec import state_from_json, state_to_json
from interlink.saga.definition import SagaDefinition, Send
from interlink.saga.errors import InvalidReply, SagaError, SagaNotFound
from interlink.saga.state import (
    ACTIVE,
    RunAction,
    SagaState,
    StepStatus,
    Wake,
    decide,
    new_state,
)
from interlink.saga.stores import SagaRow, SagaStore
from interlink.tracing.spans import Spans

__all__ = ["Orchestrator", "SagaStats", "default_owner"]

log = logging.getLogger("interlink.saga")


@dataclass(slots=True)
class SagaStats:
    """Counters since the orchestrator was made (read them for metrics)."""

    #: Success replies that came after their step was given up on (timed out, failed or
    #: compensated): each makes the saga undo that step again, or park.
    late_successes: int = 0


def default_owner(definitions: Mapping[str, SagaDefinition]) -> str:
    """The owner name an orchestrator takes when given none: the same after a restart, so the
    restarted process takes its sagas back at once. The service (``OTEL_SERVICE_NAME``, else
    the names of the sagas it drives) and the host."""
    service = os.environ.get("OTEL_SERVICE_NAME") or "+".join(sorted(definitions))
    return f"{service}@{socket.gethostname()}".replace("#", "_")


class Orchestrator(AsyncOpening):
    """Drives the sagas of ``definitions`` kept in ``store``.

    ``async with Orchestrator(store, [place_order]) as orch: await orch.start("place_order",
    data)``. ``publisher`` is needed for ``Send`` steps (a messaging ``Broker`` or any
    ``Publisher``); feed the replies in with ``deliver_reply``. At most ``max_concurrent`` sagas
    run at once; ``poll_interval`` is how often the store is asked for sagas that became due.
    ``clock`` is wall-clock time (leases are compared across processes).
    """

    def __init__(
        self,
        store: SagaStore | str,
        definitions: Iterable[SagaDefinition],
        *,
        owner: str | None = None,
        publisher: Any = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        max_concurrent: int = 100,
        clock: Clock = time.time,
        tracer_provider: object | None = None,
    ) -> None:
        self._own_store = isinstance(store, str)
        self._store: SagaStore = SagaStore.from_url(store) if isinstance(store, str) else store
        self._definitions: dict[str, SagaDefinition] = {}
        for d in definitions:
            if d.name in self._definitions:
                raise ValueError(f"'definitions' must have unique names: {d.name!r} repeats")
            self._definitions[d.name] = d
        if not self._definitions:
            raise ValueError("'definitions' must name at least one SagaDefinition")
        sends = [
            s.name
            for d in self._definitions.values()
            for s in d.steps
            if isinstance(s.action, Send) or isinstance(s.compensation, Send)
        ]
        if sends and publisher is None:
            raise ValueError(f"'publisher' is needed: steps {sends} send commands")
        self._publisher = None if publisher is None else Sink(publisher)
        if owner is not None and (not isinstance(owner, str) or not owner or "#" in owner):
            raise ValueError(f"'owner' must be a non-empty string without '#': {owner!r}")
        self._named = owner is not None
        self._name = owner or default_owner(self._definitions)
        # What the rows say: the name plus this process's incarnation, so that a write from an
        # earlier process of the same name (one that lost its owner lock) changes nothing.
        self._owner = f"{self._name}#{uuid.uuid4().hex[:8]}"
        self._take_back = False  # whether this process holds the name's owner lock
        self._lease = positive("lease", lease)
        self._poll = positive("poll_interval", poll_interval)
        self._max = positive_int("max_concurrent", max_concurrent)
        self._clock = clock
        self._replies = ReplyBox(self._store)
        self._driver = Driver(
            store=self._store,
            owner=self._owner,
            definitions=self._definitions,
            publisher=self._publisher,
            replies=self._replies,
            clock=clock,
            hold=min(self._poll, self._lease / 3),
            spans=Spans(tracer_provider, name="interlink.saga"),
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self._backlog = True  # sagas may be waiting to be claimed
        self.stats = SagaStats()

    @property
    def owner(self) -> str:
        """What this orchestrator's leases say: its ``owner`` name and ``#`` and a part unique
        to this process (a name another live process held: a name unique to this process)."""
        return self._owner

    @property
    def store(self) -> SagaStore:
        """The store the sagas live in."""
        return self._store

    @property
    def running(self) -> int:
        """Sagas being driven right now."""
        return len(self._tasks)

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store, take back this owner's sagas and start claiming; idempotent."""
        if self._loop_task is not None:
            return
        await self._store.open()
        self._take_back = await self._store.hold_owner(self._name)
        if not self._take_back:
            if self._named:
                raise SagaError(
                    f"owner {self._name!r} is held by another live orchestrator on this store: "
                    "give each live orchestrator its own name"
                )
            # Another live process of this service on this host: run under a name of our own
            # and leave its sagas alone (they are not ours to take back).
            self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            log.info("owner %r is in use by a live process; running as %r", self._name, self._owner)
        self._driver = replace(self._driver, owner=self._owner)
        self._renewed_at = self._clock()
        self._loop_task = asyncio.create_task(self._claim_loop(), name="saga-claims")
        self._renew_task = asyncio.create_task(self._renew_loop(), name="saga-leases")

    async def run(self) -> None:
        """Open and drive sagas until cancelled (the body of a worker process)."""
        await self.open()
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop claiming, cancel the attempts in flight and release their sagas, so another
        orchestrator can take them over at once (it runs the interrupted attempts again)."""
        background = [t for t in (self._loop_task, self._renew_task) if t is not None]
        self._loop_task = self._renew_task = None
        for task in background:
            task.cancel()
        driving = dict(self._tasks)
        for task in driving.values():
            task.cancel()
        await asyncio.gather(*background, *driving.values(), return_exceptions=True)
        now = self._clock()
        for sid in driving:
            with contextlib.suppress(Exception):  # fenced: a no-op if someone else has it
                await self._store.release(sid, owner=self._owner, wake_at=now)
        if self._take_back:
            self._take_back = False
            with contextlib.suppress(Exception):
                await self._store.release_owner(self._name)
        if self._own_store:
            await self._store.close()

    # -- the user's calls ---------------------------------------------------------------------

    async def start(
        self, saga: str | SagaDefinition, data: Any, *, saga_id: str | None = None
    ) -> str:
        """Persist a new saga and start driving it; returns its id once it is durable.

        Idempotent per ``saga_id``: starting an id that exists returns it without a second
        saga (use the order id, say, to make a retried request safe).
        """
        definition = self._definition(saga)
        stored = definition.dump(data)
        validated = definition.validate(stored)  # refuse bad input now, not in the background
        sid = saga_id if saga_id is not None else uuid.uuid4().hex
        now = self._clock()
        state = new_state(
            sid, definition.name, definition.shape, stored, at=now, timeout=definition.timeout
        )
        trace = root_context(self._driver.spans, definition.name, sid)
        if trace is not None:
            state = replace(state, trace=trace)
        drive = self._loop_task is not None and len(self._tasks) < self._max
        started: Started | None = None
        if drive:
            # Store the saga with its first attempt already announced: one write, not two.
            decision = decide(state, Wake(now), definition.shape)
            if isinstance(decision.command, RunAction):
                started = Started(decision.state, decision.command, validated)
                state = decision.state
        row = SagaRow(
            saga_id=sid,
            name=definition.name,
            status=state.status.value,
            state=state_to_json(state),
            version=0,
            owner=None,
            lease_until=0.0,
            wake_at=now,
            created_at=now,
            updated_at=now,
            error=None,
        )
        created = await self._store.create(
            row, owner=self._owner if drive else None, lease_until=now + self._lease if drive else 0
        )
        if created is None:
            existing = await self._store.get(sid)
            if existing is not None and existing.name != definition.name:
                raise ValueError(f"saga {sid!r} exists already as a {existing.name!r} saga")
            return sid
        if drive:
            self._spawn(created, started)
        else:
            self._backlog = True
            self._wakeup.set()
        return sid

    async def get(self, saga_id: str) -> SagaState:
        """The saga's current state (``SagaNotFound``, ``CorruptSagaState``)."""
        return await load_saga(self._store, saga_id)

    async def wait(self, saga_id: str, *, max_wait: float = 30.0, poll: float = 0.02) -> SagaState:
        """Wait until the saga is no longer active (finished or parked); its state then.
        Raises ``TimeoutError`` after ``max_wait`` seconds."""
        async with asyncio.timeout(max_wait):
            while True:
                state = await self.get(saga_id)
                if state.status not in ACTIVE:
                    return state
                await asyncio.sleep(poll)

    async def resume(self, saga_id: str) -> SagaState:
        """``resume_saga`` on this orchestrator's store, then look for it at once."""
        state = await resume_saga(self._store, saga_id, now=self._clock())
        self._wakeup.set()
        return state

    async def deliver_reply(self, headers: Mapping[str, str], body: bytes | str) -> None:
        """A reply to a ``Send`` command arrived (call this from the reply topic's handler).

        Unknown saga ids raise ``SagaNotFound`` and replies without the ``saga-*`` headers raise
        ``InvalidReply``: drop (ack) such messages, they can never succeed. A body that does not
        parse or validate is kept: the waiting saga is parked with the reason.
        """
        saga_id, slot = headers.get(SAGA_ID), headers.get(SAGA_STEP)
        attempt = headers.get(SAGA_ATTEMPT, "")
        if not saga_id or not slot or not attempt.isdigit():
            raise InvalidReply(slot or "?", f"missing {SAGA_ID}/{SAGA_STEP}/{SAGA_ATTEMPT} headers")
        row = await self._store.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        data = body.encode() if isinstance(body, str) else bytes(body)
        await self._store.put_reply(saga_id, slot, int(attempt), data)
        if self._replies.notify(saga_id, slot):
            return  # an attempt here is waiting for it: news on time
        if slot.endswith(COMPENSATION_SLOT) or not reply_says_ok(data):
            return
        # A success nobody here waits for: late news if the saga gave up on that step (the
        # attempt timed out, the step failed or was undone): its effect may outlive the saga.
        try:
            state = state_from_json(saga_id, row.state, row.version)
            step = state.step(slot)
        except (SagaError, KeyError):
            return  # a damaged row is parked by whoever drives it; nothing to add here
        if step.status in (StepStatus.FAILED, StepStatus.COMPENSATING, StepStatus.COMPENSATED):
            self.stats.late_successes += 1
            log.warning(
                "saga %s: late success reply for step %r (attempt %s) after it was %s; "
                "the saga will undo it again or park",
                saga_id,
                slot,
                attempt,
                step.status,
            )
            await self._store.mark_late(saga_id)
            self._backlog = True
            self._wakeup.set()

    def subscribe_replies(
        self, broker: Any, topic: str, *, group: str = "saga-orchestrator"
    ) -> None:
        """Register, on a messaging ``Broker`` (before it starts), the handler that feeds the
        replies arriving on ``topic`` to ``deliver_reply``. Replies that can never be used
        (unknown saga, no ``saga-*`` headers) are logged and dropped, so they block nothing."""

        async def on_reply(envelope: Envelope) -> None:
            try:
                await self.deliver_reply(envelope.headers, envelope.payload)
            except (SagaNotFound, InvalidReply) as exc:
                log.warning("dropping reply %s on %s: %s", envelope.id, topic, exc)

        broker.subscriber(topic, group=group)(on_reply)

    # -- claiming and leases ------------------------------------------------------------------

    def _definition(self, saga: str | SagaDefinition) -> SagaDefinition:
        name = saga.name if isinstance(saga, SagaDefinition) else saga
        try:
            return self._definitions[name]
        except KeyError:
            known = sorted(self._definitions)
            raise ValueError(f"no saga definition {name!r} here (known: {known})") from None

    def _spawn(self, row: SagaRow, started: Started | None = None) -> None:
        if row.saga_id in self._tasks:
            return
        task = asyncio.create_task(self._driver.drive(row, started), name=f"saga-{row.saga_id}")
        self._tasks[row.saga_id] = task
        task.add_done_callback(functools.partial(self._finished, row.saga_id))

    def _finished(self, saga_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(saga_id) is task:
            del self._tasks[saga_id]
            self._driver.letting_go.discard(saga_id)
        if self._backlog:  # sagas are waiting for a free slot: claim now, not at the next poll
            self._wakeup.set()
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("saga %s: driver crashed: %s", saga_id, error_text(exc), exc_info=exc)

    async def _claim_loop(self) -> None:
        own = self._take_back  # first take back what this owner held before a restart
        while True:
            free = self._max - len(self._tasks)
            if free > 0:
                now = self._clock()
                busy = len(self._tasks)
                try:
                    rows = await self._store.claim(
                        owner=self._owner,
                        names=self._definitions.keys(),
                        now=now,
                        lease_until=now + self._lease,
                        # Own rows include those this process drives already: ask for more.
                        limit=free + busy if own else free,
                        own=self._name if own else None,
                    )
                except Exception as exc:  # the store is down: keep trying, calmly
                    log.warning("saga claim failed: %s", error_text(exc))
                    rows = []
                new = [r for r in rows if r.saga_id not in self._tasks]
                for row in new:
                    self._spawn(row)
                if own and len(new) < free:
                    own = False
                self._backlog = own or len(new) >= free  # more may be waiting for a slot
                if self._backlog and new:
                    continue
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation
            # that stops this loop when the wake-up lands at the same moment.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wakeup.wait()
                # Woken by a finished saga: let a few more finish, then claim for all of them
                # in one query instead of one query per slot.
                if self._max - len(self._tasks) < self._max // 4:
                    await asyncio.sleep(min(self._poll, 0.005))

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            ids = list(self._tasks)
            now = self._clock()
            try:
                kept = await self._store.renew(
                    owner=self._owner, ids=ids, lease_until=now + self._lease
                )
            except Exception as exc:
                log.warning("saga lease renewal failed: %s", error_text(exc))
                if self._clock() - self._renewed_at > self._lease * 0.8:
                    kept = set()  # fence ourselves before anyone may take over
                else:
                    continue
            else:
                self._renewed_at = now
            for sid in ids:
                task = self._tasks.get(sid)
                if sid in kept or task is None or task.done() or sid in self._driver.letting_go:
                    continue  # kept, or finished and let go on purpose: nothing was lost
                log.warning("saga %s: lease lost; stopping its attempt", sid)
                task.cancel()
