"""The consumer loop: fetch, decode, guard, handle, then ack / retry later / dead-letter.

One ``Consumer`` per subscription. It pulls deliveries from the backend with at most
``concurrency`` held at once (backpressure: a slow handler slows the fetching, never grows a
queue), runs handlers as tasks, keeps messages of one key in order (a per-key lane: the next
message of a key starts when the previous one is finished), and carries out the decision
``envelope.decide_*`` made. Stopping is graceful: no more fetching, queued deliveries go back
at once, running handlers get ``grace`` seconds, then are cancelled and their messages go back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from interlink.context import use_correlation_id, valid_correlation_id
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


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The message being handled: where it came from and which delivery this is."""

    topic: str
    group: str
    envelope: Envelope
    attempt: int


_CURRENT: ContextVar[MessageInfo | None] = ContextVar("interlink_current_message", default=None)


def current_message() -> MessageInfo:
    """The message the running handler was called with (its envelope, the attempt)."""
    info = _CURRENT.get()
    if info is None:
        raise LookupError("current_message() is only available inside a message handler")
    return info


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
        self._slots = asyncio.Semaphore(subscription.concurrency)
        self._lanes: dict[str, deque[Delivery]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetcher: asyncio.Task[None] | None = None
        self._iterator: AsyncIterator[Delivery] | None = None
        self._stopping = False

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
        self._stopping = False
        name = f"interlink-consumer {self._sub.topic}/{self._sub.group}"
        self._fetcher = asyncio.create_task(self._fetch(), name=name)

    async def stop(self, grace: float) -> None:
        """Stop fetching; give running handlers ``grace`` seconds; hand everything else back."""
        self._stopping = True
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetcher
        iterator, self._iterator = self._iterator, None
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
        queued = [d for lane in self._lanes.values() for d in lane]
        for lane in self._lanes.values():
            lane.clear()
        for delivery in queued:
            await self._settle(delivery, Decision("retry", delay=0.0))
            self._slots.release()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # -- fetching -----------------------------------------------------------------------

    async def _fetch(self) -> None:
        sub = self._sub
        backoff = 0.05
        while not self._stopping:
            iterator = self._backend.subscribe(sub.topic, sub.group, prefetch=sub.prefetch)
            self._iterator = iterator
            try:
                while True:
                    await self._slots.acquire()
                    try:
                        delivery = await anext(iterator)
                    except BaseException:
                        self._slots.release()
                        raise
                    self._dispatch(delivery)
                    backoff = 0.05
            except StopAsyncIteration:
                return
            except Exception:
                log.exception(
                    "consumer of %s/%s lost its subscription; resubscribing in %.2fs",
                    sub.topic,
                    sub.group,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _dispatch(self, delivery: Delivery) -> None:
        key = delivery.envelope.key
        if key is not None:
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(delivery)
                return
            self._lanes[key] = deque()
        self._spawn(delivery)

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._process(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one delivery -------------------------------------------------------------------

    async def _process(self, delivery: Delivery) -> None:
        try:
            try:
                decision = await self._handle(delivery)
            except asyncio.CancelledError:
                # Past the grace period: the message goes back for another consumer.
                await self._settle(delivery, Decision("retry", delay=0.0))
                raise
            await self._settle(delivery, decision)
        finally:
            self._slots.release()
            key = delivery.envelope.key
            if key is not None:
                lane = self._lanes.get(key)
                if lane and not self._stopping:
                    self._spawn(lane.popleft())
                elif lane is not None and not lane:
                    del self._lanes[key]

    async def _handle(self, delivery: Delivery) -> Decision:
        sub = self._sub
        envelope = delivery.envelope
        if envelope.error is not None:
            return decide_poison(envelope.error, _ENVELOPE_ERROR)
        try:
            message = sub.decode(envelope)
        except Exception as exc:
            return decide_poison(str(exc), error_type_of(exc))
        attempt = delivery.attempt
        if attempt <= 1:
            sub.retry.begin()
        cid = envelope.correlation_id
        if cid is not None and not valid_correlation_id(cid):
            cid = None  # a malformed id is replaced, as the HTTP middleware does
        _CURRENT.set(MessageInfo(sub.topic, sub.group, envelope, attempt))  # task-local
        try:
            with (
                use_correlation_id(cid),
                consume_span(self._spans, sub.topic, sub.group, envelope.headers),
            ):
                store = sub.idempotency
                if store is None:
                    await sub.handler(message)
                else:
                    async with store.guard(sub.group, envelope.id) as fresh:
                        if fresh:
                            await sub.handler(message)
                        else:
                            log.debug("skipped %s on %s: already processed", envelope.id, sub.topic)
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
            # The backend takes the message back when its lease ends: delivered again, not lost.
            log.exception(
                "could not %s %s on %s", decision.action, delivery.envelope.id, self._sub.topic
            )
