"""Consuming from JetStream: pull requests with a credit window, the
deliveries they bring, and handing back what was fetched but not taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any

from nats.aio.msg import Msg

from interlink.messaging.backend import Delivery
from interlink.messaging.backends._base import Received, Subscribed, letter_of
from interlink.messaging.backends._options import reconnect_delay
from interlink.messaging.backends._wait import Signal
from interlink.messaging.backends.nats._jetstream import API, JetStream
from interlink.messaging.backends.nats._publish import MSG_ID, SEND_ERRORS
from interlink.messaging.envelope import NATS, encode_dead_letter, read

__all__ = ["NatsDelivery", "pull"]

log = logging.getLogger("interlink.messaging.nats")

_ACK = b""
_NONE: Mapping[str, str] = {}
_NAK = b"-NAK"


def _delivery_info(reply: str) -> tuple[int, int]:
    """(delivery count, stream sequence) from a JetStream ack subject: ``$JS.ACK.<stream>.
    <consumer>.<delivered>.<sseq>...`` or, with domain and account hash, two tokens later."""
    tokens = reply.split(".")
    if len(tokens) >= 12:
        return int(tokens[6]), int(tokens[7])
    return int(tokens[4]), int(tokens[5])


class NatsDelivery(Received):
    __slots__ = ("_done", "_reply", "_seq", "_sub")

    def __init__(self, sub: Subscribed[JetStream], msg: Msg) -> None:
        self._sub = sub
        self._reply = msg.reply
        self._done = False
        self.attempt, self._seq = _delivery_info(msg.reply)
        self.raw = msg.data
        headers = self.headers = msg.headers or _NONE
        native = headers.get(MSG_ID) if headers else None
        fallback = native or f"{sub.topic}:{self._seq}"
        self.envelope = read(NATS, msg.data, headers, fallback_id=fallback)

    async def _send(self, payload: bytes) -> None:
        if not self._done:
            self._done = True
            await self._sub.backend.client().publish(self._reply, payload)

    async def ack(self) -> None:
        await self._send(_ACK)

    async def nack(self, delay: float) -> None:
        if delay > 0:
            await self._send(b'-NAK {"delay":%d}' % int(delay * 1e9))
        else:
            await self._send(_NAK)

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._done:
            return
        topic, group = self._sub.topic, self._sub.group
        letter = letter_of(self, topic, group, reason, error_type, NATS, frozenset({MSG_ID}))
        # The id makes a dead-lettering repeated after a lost ack land in the DLQ once.
        dedup = f"dlq:{topic}:{self._seq}:{group}"
        await self._sub.backend.publish_one(
            f"{topic}.dlq", encode_dead_letter(letter), _NONE, dedup
        )
        await self._send(_ACK)


async def pull(
    backend: JetStream, topic: str, group: str, prefetch: int
) -> AsyncIterator[Delivery]:
    """Deliveries for ``group``: a credit window of pull requests on one inbox."""
    await backend.ensure_group(topic, group)
    subscribed = Subscribed(backend, topic, group)
    nc = backend.client()
    stream = backend.stream_of(topic)
    subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{group}"
    inbox = nc.new_inbox()
    buffer: deque[Msg] = deque()
    signal = Signal()

    async def arrived(msg: Msg) -> None:
        buffer.append(msg)
        signal.wake()

    sub = await nc.subscribe(inbox, cb=arrived)
    backend.signals.add(signal)
    expires = int(backend.pull_expires * 1e9)
    low = max(1, prefetch // 2)
    outstanding = 0
    generation = backend.generation
    failures = 0
    try:
        while True:
            if generation != backend.generation:  # reconnected: old requests may be gone
                generation, outstanding = backend.generation, 0
            want = prefetch - len(buffer) - outstanding
            if want >= low or (want > 0 and not buffer and not outstanding):
                request = b'{"batch":%d,"expires":%d}' % (want, expires)
                try:
                    await nc.publish(subject, request, reply=inbox)
                    outstanding += want
                except SEND_ERRORS as exc:
                    failures += 1
                    await asyncio.sleep(reconnect_delay(failures, exc))
                    continue
            if not buffer:
                await signal.wait(backend.pull_expires + 1.0)
                if not buffer:  # no answer at all, not even a timeout: ask again
                    outstanding = 0
                    continue
            msg = buffer.popleft()
            if not msg.reply:  # a status message about a pull request
                outstanding, failures = await _status(
                    backend, msg, outstanding, failures, topic=topic, group=group
                )
                continue
            failures = 0
            if outstanding:
                outstanding -= 1
            yield NatsDelivery(subscribed, msg)
    finally:
        backend.signals.discard(signal)
        await _release(backend, sub, buffer, stream, group)


async def _status(
    backend: JetStream, msg: Msg, outstanding: int, failures: int, *, topic: str, group: str
) -> tuple[int, int]:
    headers = msg.headers or {}
    status = headers.get("Status", "")
    if status in ("404", "408"):  # no messages / the request expired
        left = headers.get("Nats-Pending-Messages")
        return (max(0, outstanding - int(left)) if left else 0), failures
    if status == "100":  # idle heartbeat
        return outstanding, failures
    # 409 (consumer deleted, leadership change, limits) or 503 (JetStream not there yet,
    # e.g. just restarted): ask again after a pause; recreate the consumer if it is gone.
    failures += 1
    description = str(headers.get("Description", ""))
    log.warning("nats: pull on %s/%s answered %s %s", topic, group, status, description)
    await asyncio.sleep(reconnect_delay(failures, ConnectionError(description)))
    if "deleted" in description.lower() or status == "503":
        backend.forget_consumer(topic, group)
        with contextlib.suppress(Exception):
            await backend.ensure_group(topic, group)
    return 0, failures


async def _release(
    backend: JetStream, sub: Any, buffer: deque[Msg], stream: str, group: str
) -> None:
    """Stop the subscription, then hand back every fetched message nobody took."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.drain(), 2.0)  # what the server sent still arrives
    nc = backend.nc
    if nc is None:
        return
    with contextlib.suppress(Exception):
        # Our pull requests may still be waiting on the server, which (2.9) would hand a
        # NAKed message straight back to one of them, although nobody listens any more
        # (stuck until ack_wait): these NAKs, and those of handlers still finishing after
        # the stop. Asking for the consumer's info prunes requests whose inbox lost its
        # interest; only then are the NAKs sent.
        await backend.api(f"CONSUMER.INFO.{stream}.{group}")
        for msg in buffer:
            if msg.reply:
                await nc.publish(msg.reply, _NAK)
        await asyncio.wait_for(nc.flush(), 2.0)
