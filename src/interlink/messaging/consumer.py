"""The consumer loop: fetch, decode, guard, handle, then ack / retry later / dead-letter.

One ``Consumer`` per subscription. At most ``concurrency`` deliveries are held at once
(backpressure: a slow handler slows the fetching, never grows a queue), messages of one key
run one after another (a per-key lane: the next message of a key starts when the previous one
is finished), and the decision ``envelope.decide_*`` made is carried out. Stopping is
graceful: no more fetching, queued deliveries go back at once, running handlers get ``grace``
seconds, then are cancelled and their messages go back.

How it runs (``_runner.py``): up to ``concurrency`` long-lived runner tasks, not a task per
message. One runner at a time fetches; it then handles what it fetched itself, and only when
that handler actually waits (I/O) does another runner take over the fetching. Fast handlers
thus cost no task, no wake-up and no semaphore; slow ones overlap up to ``concurrency``. Each
delivery still runs in a context of its own (a copy, as a task would have), so the current
message, the correlation id and the trace context of one message never leak into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, replace
from typing import Any

from interlink.context import CORRELATION, new_correlation_id, valid_correlation_id
from interlink.messaging._ids import ID_LENGTH
from interlink.messaging._runner import drive
from interlink.messaging._trace import consume_span
from interlink.messaging.backend import Backend, Delivery
from interlink.messaging.envelope import (
    ACK,
    Decision,
    Envelope,
    decide_failure,
    decide_poison,
    error_type_of,
)
from interlink.messaging.idempotency import IdempotencyStore, InProgress
from interlink.resilience.retry import Retry
from interlink.tracing.spans import Spans

__all__ = ["Consumer", "MessageInfo", "Subscription", "current_message"]

log = logging.getLogger("interlink.messaging")

_ENVELOPE_ERROR = "interlink.messaging.envelope.EnvelopeError"
_GO_BACK = Decision("retry", delay=0.0)
#: Seconds a runner may handle messages that never wait before it lets other tasks run.
_TURN = 0.005


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The message being handled: where it came from and which delivery this is."""

    topic: str
    group: str
    envelope: Envelope
    attempt: int


# (topic, group, envelope, attempt), made into a MessageInfo only when asked for
_CURRENT: ContextVar[tuple[str, str, Envelope, int] | None] = ContextVar(
    "interlink_current_message", default=None
)


def current_message() -> MessageInfo:
    """The message the running handler was called with (its envelope, the attempt)."""
    info = _CURRENT.get()
    if info is None:
        raise LookupError("current_message() is only available inside a message handler")
    return MessageInfo(*info)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A registered handler and its options (what ``Broker.subscriber`` records)."""

    topic: str
    group: str
    handler: Callable[[Any], Awaitable[Any]]
    decode: Callable[[Envelope], Any]
    message_type: Any
    retry: Retry
    max_deliveries: int
    concurrency: int
    prefetch: int
    idempotency: IdempotencyStore | None
    description: str | None = None


class Consumer:
    """Runs one subscription against one backend."""

    def __init__(
        self, backend: Backend, subscription: Subscription, spans: Spans | None = None
    ) -> None:
        self._backend = backend
        self._spans = spans if spans is not None else Spans(name="interlink.messaging")
        self._sub = subscription
        self._limit = subscription.concurrency
        self._budgeted = subscription.retry.budget is not None  # begin() deposits in it
        self._held = 0  # deliveries fetched and not yet settled (queued in lanes included)
        self._lanes: dict[str, deque[Delivery]] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._idle: deque[asyncio.Future[None]] = deque()  # runners waiting for work
        self._fetching: asyncio.Task[Any] | None = None  # the runner inside anext(), if any
        self._iterator: AsyncIterator[Delivery] | None = None
        # the iterator's ``ready()``, if it has one: a delivery it already holds, no waiting
        self._ready: Callable[[], Delivery | None] | None = None
        self._backoff = 0.05
        # An idempotency claim of a consumer that died lasts as long as its delivery's lease.
        visibility = getattr(backend, "visibility_timeout", None)
        self._lease: float | None = visibility if isinstance(visibility, int | float) else None
        self._stopping = False
        self._ended = False

    @property
    def subscription(self) -> Subscription:
        """What this consumer runs."""
        return self._sub

    async def start(self) -> None:
        """Make sure the group exists, then start fetching in a background task."""
        ensure = getattr(self._backend, "ensure_group", None)
        if ensure is not None:
            await ensure(self._sub.topic, self._sub.group)
        if self._sub.idempotency is not None:
            await self._sub.idempotency.open()
        self._stopping = self._ended = False
        self._spawn()

    async def stop(self, grace: float) -> None:
        """Stop fetching; give running handlers ``grace`` seconds; hand everything else back."""
        self._stopping = True
        fetching, self._fetching = self._fetching, None
        if fetching is not None:  # waiting in anext() (or in a resubscribe backoff)
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({fetching})
        self._wake_all()
        iterator, self._iterator, self._ready = self._iterator, None, None
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
        queued = [d for lane in self._lanes.values() for d in lane]
        for lane in self._lanes.values():
            lane.clear()
        for delivery in queued:
            await self._settle(delivery, _GO_BACK)
            self._held -= 1
        if self._runners:
            _, late = await asyncio.wait(set(self._runners), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- runners ------------------------------------------------------------------------

    def _spawn(self) -> None:
        name = f"interlink-consumer {self._sub.topic}/{self._sub.group}"
        task = asyncio.get_running_loop().create_task(self._run(), name=name)
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    def _wake_all(self) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _waiting(self) -> None:
        """A handler of this consumer waits for I/O: if nobody is fetching and there is room,
        another runner fetches meanwhile (an idle one, or a new one up to ``concurrency``)."""
        if self._fetching is not None or self._held >= self._limit or self._stopping:
            return
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self._runners) < self._limit:
            self._spawn()

    async def _run(self) -> None:
        me = asyncio.current_task()
        clock = time.monotonic  # a turn's length, read once per message: no loop method call
        turn_ends = clock() + _TURN
        while True:
            # what the last fetch brought, taken without a coroutine; else wait for more
            delivery = self._take_ready()
            if delivery is None:
                delivery = await self._take(me)
                if delivery is None:
                    return
            while delivery is not None:  # the delivery, then what its key's lane queued
                try:
                    await drive(self._process(delivery), copy_context(), self._waiting)
                except asyncio.CancelledError:
                    if self._stopping or (me is not None and me.cancelling()):
                        raise
                    # the handler's own cancellation: its message went back, keep going
                except Exception:  # a bug of ours, not the handler's: the lease brings it back
                    log.exception(
                        "consumer of %s/%s failed on %s",
                        self._sub.topic,
                        self._sub.group,
                        delivery.envelope.id,
                    )
                self._held -= 1
                delivery = self._next_in_lane(delivery)
            if clock() >= turn_ends:  # handlers that never wait would starve the loop
                await asyncio.sleep(0)
                turn_ends = clock() + _TURN

    def _next_in_lane(self, delivery: Delivery) -> Delivery | None:
        key = delivery.envelope.key
        if key is None:
            return None
        lane = self._lanes.get(key)
        if lane and not self._stopping:
            return lane.popleft()
        if lane is not None and not lane:
            del self._lanes[key]
        return None

    def _take_ready(self) -> Delivery | None:
        """A delivery the iterator already holds, if this runner may take one now (nobody
        fetching, room under ``concurrency``); deliveries whose key is busy go to its lane."""
        ready = self._ready
        while not (
            ready is None
            or self._stopping
            or self._ended
            or self._fetching is not None
            or self._held >= self._limit
        ):
            delivery = ready()
            if delivery is None:
                return None
            self._held += 1
            if self._free(delivery):
                return delivery
        return None

    def _free(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` may run now; if its key is busy it waits its turn in the
        key's lane (False)."""
        key = delivery.envelope.key
        if key is not None:
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(delivery)
                return False
            self._lanes[key] = deque()
        return True

    async def _take(self, me: asyncio.Task[Any] | None) -> Delivery | None:
        """The next delivery for this runner to handle; None when the consumer stops."""
        while not (self._stopping or self._ended):
            if self._fetching is not None or self._held >= self._limit:
                waiter = asyncio.get_running_loop().create_future()
                self._idle.append(waiter)
                await waiter
                continue
            delivery = self._take_ready()
            if delivery is not None:
                return delivery
            if self._fetching is not None or self._held >= self._limit:
                continue  # lanes took what was ready and filled the room: wait at the top
            delivery = await self._fetch(me)
            if delivery is None:
                break
            if self._free(delivery):
                return delivery
        return None

    async def _fetch(self, me: asyncio.Task[Any] | None) -> Delivery | None:
        sub = self._sub
        self._fetching = me
        try:
            while not self._stopping:
                try:
                    if self._iterator is None:
                        self._iterator = self._backend.subscribe(
                            sub.topic, sub.group, prefetch=sub.prefetch
                        )
                        self._ready = getattr(self._iterator, "ready", None)
                    delivery = await anext(self._iterator)
                except StopAsyncIteration:
                    self._ended = True
                    self._wake_all()
                    return None
                except Exception:
                    self._iterator = self._ready = None
                    log.exception(
                        "consumer of %s/%s lost its subscription; resubscribing in %.2fs",
                        sub.topic,
                        sub.group,
                        self._backoff,
                    )
                    await asyncio.sleep(self._backoff)
                    self._backoff = min(self._backoff * 2, 5.0)
                    continue
                self._backoff = 0.05
                self._held += 1
                return delivery
            return None
        finally:
            if self._fetching is me:
                self._fetching = None

    # -- one delivery (runs in a context of its own) ------------------------------------

    async def _process(self, delivery: Delivery) -> None:
        try:
            decision = await self._handle(delivery)
        except asyncio.CancelledError:
            # Past the grace period: the message goes back for another consumer.
            await self._settle(delivery, _GO_BACK)
            raise
        if decision is not ACK:
            await self._settle(delivery, decision)
            return
        try:  # the usual outcome, without _settle's dispatch
            await delivery.ack()
        except Exception:
            self._not_settled(delivery, decision)

    async def _handle(self, delivery: Delivery) -> Decision:
        sub = self._sub
        envelope = delivery.envelope
        if envelope.error is not None:
            return decide_poison(envelope.error, _ENVELOPE_ERROR)
        try:
            message = sub.decode(envelope)
        except Exception as exc:
            return decide_poison(str(exc), error_type_of(exc))
        if not envelope.type:  # a bare payload: it is what the subscriber's model says
            envelope = replace(envelope, type=_type_name(sub.message_type))
        attempt = delivery.attempt
        if attempt <= 1 and self._budgeted:
            sub.retry.begin()
        # This coroutine runs in a context of its own: set, never reset.
        _CURRENT.set((sub.topic, sub.group, envelope, attempt))
        CORRELATION.set(_correlation_of(envelope))
        try:
            if envelope.headers or self._spans.tracer() is not None:
                with consume_span(self._spans, sub.topic, sub.group, envelope.headers):
                    await self._call(sub, envelope, message, self._lease)
            elif sub.idempotency is None:  # no span, no guard: the handler and nothing else
                await sub.handler(message)
            else:  # no trace context to continue and no span to record
                await self._call(sub, envelope, message, self._lease)
        except InProgress as busy:
            return Decision("retry", delay=max(busy.retry_after, 0.01))
        except Exception as exc:
            decision = decide_failure(
                exc, attempt=attempt, max_deliveries=sub.max_deliveries, retry=sub.retry
            )
            if decision.action == "retry":
                log.info(
                    "handler for %s/%s failed (attempt %d), retrying in %.3fs: %r",
                    sub.topic,
                    sub.group,
                    attempt,
                    decision.delay,
                    exc,
                )
            return decision
        return ACK

    @staticmethod
    async def _call(
        sub: Subscription, envelope: Envelope, message: Any, lease: float | None
    ) -> None:
        store = sub.idempotency
        if store is None:
            await sub.handler(message)
            return
        async with store.guard(sub.group, envelope.id, lease=lease) as fresh:
            if fresh:
                await sub.handler(message)
            else:
                log.debug("skipped %s on %s: already processed", envelope.id, sub.topic)

    async def _settle(self, delivery: Delivery, decision: Decision) -> None:
        try:
            if decision.action == "ack":
                await delivery.ack()
            elif decision.action == "retry":
                await delivery.nack(decision.delay)
            else:
                log.warning(
                    "dead-lettering %s from %s/%s after %d deliveries: %s",
                    delivery.envelope.id,
                    self._sub.topic,
                    self._sub.group,
                    delivery.attempt,
                    decision.reason,
                )
                await delivery.dead_letter(decision.reason, decision.error_type)
        except Exception:
            self._not_settled(delivery, decision)

    def _not_settled(self, delivery: Delivery, decision: Decision) -> None:
        # The backend takes the message back when its lease ends: delivered again, not lost.
        log.exception(
            "could not %s %s on %s", decision.action, delivery.envelope.id, self._sub.topic
        )


def _type_name(message_type: Any) -> str:
    return str(getattr(message_type, "__name__", message_type))


def _correlation_of(envelope: Envelope) -> str:
    """The publisher's correlation id; else the message id, which names this message's work
    as well as any id would and stays the same across its redeliveries; else a new one (a
    malformed id is replaced, as the HTTP middleware does)."""
    cid = envelope.correlation_id
    if cid is not None and valid_correlation_id(cid):
        return cid
    mid = envelope.id
    if (len(mid) == ID_LENGTH and mid.isalnum() and mid.isascii()) or valid_correlation_id(mid):
        return mid  # interlink's own ids pass the first test, cheaper than the regex
    return new_correlation_id()
