"""NATS JetStream backend: ``nats://host:4222`` (``tls://`` for TLS; servers comma-separated).

Layout on the server:

- one stream per topic, named ``interlink:<topic with ':' for '.'>``, capturing the subject
  ``<topic>`` (an existing stream that already captures the subject is used instead, so an
  operator can provision one stream for a whole prefix); file storage by default;
- one durable pull consumer per group, named after the group: explicit ack, ``ack_wait`` is the
  lease, ``max_deliver`` unlimited (the interlink consumer dead-letters at ``max_deliveries``;
  JetStream's own limit would only stop redelivering and leave the message nowhere);
- ``<topic>.dlq`` is an ordinary topic (its own stream) holding ``encode_dead_letter`` records.

Publishing awaits the PubAck (the message is stored in the stream) and sets ``Nats-Msg-Id`` to
the message id, so a publish retried after a timeout is deduplicated by the server within the
stream's ``duplicate_window``. A batch sends every message at once and then gathers the acks
(``_nats_publish``: on one reply inbox of the backend's own, without nats-py's per-message
overhead).
Retries are ``NAK`` with a delay: the message stays in the stream and the server redelivers it
to any consumer of the group; ``Delivery.attempt`` is the server's delivery count.

Consuming pulls with a credit window: up to ``prefetch`` messages are requested ahead, more are
asked for when half are used, and acks are fire-and-forget publishes (as in every NATS client):
a crash right after an ack may redeliver, never lose. On stop the subscription drains and the
fetched messages nobody took are NAKed back at once.

URL options: ``ack_wait`` (s, 30), ``storage`` (file|memory), ``replicas`` (1), ``max_age``
(s, 0 = keep), ``max_msgs`` (0 = no limit), ``duplicate_window`` (s, 120), ``timeout`` (s, 5:
a publish's confirmation), ``connect_timeout`` (s, 5), ``reconnect_wait`` (s, 0.5), ``pull_expires``
(s, 5), ``stream_prefix`` (``interlink:``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
except ImportError as exc:  # pragma: no cover - exercised by the no-extras install test
    raise ImportError(
        "interlink.messaging's nats:// backend needs nats-py: pip install 'interlink[nats]'"
    ) from exc

from interlink.messaging.backend import BackendUnavailable, Delivery, PublishError, redact
from interlink.messaging.backends import _nats_dlq
from interlink.messaging.backends._nats_publish import PubAcks
from interlink.messaging.backends._nats_pull import API, SEND_ERRORS, Signal, pull
from interlink.messaging.backends._options import UrlOptions, close_at_loop_end, stop_keeper
from interlink.messaging.envelope import DeadLetter, OutgoingMessage

__all__ = ["NatsBackend"]

log = logging.getLogger("interlink.messaging.nats")

_LITERAL = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class NatsBackend:
    """Messages in NATS JetStream streams (see the module docstring for the layout)."""

    scheme: ClassVar[str] = "nats"

    def __init__(self, url: str) -> None:
        opts = UrlOptions(url, "nats")
        self._url = url
        self.ack_wait = opts.number("ack_wait", 30.0, minimum=0.001)
        self.storage = opts.choice("storage", "file", ("file", "memory"))
        self.replicas = opts.integer("replicas", 1, minimum=1) or 1
        self.max_age = opts.number("max_age", 0.0)
        self.max_msgs = opts.integer("max_msgs", 0) or 0
        self.duplicate_window = opts.number("duplicate_window", 120.0)
        self.timeout = opts.number("timeout", 5.0, minimum=0.001)
        self.connect_timeout = opts.number("connect_timeout", 5.0, minimum=0.001)
        self.reconnect_wait = opts.number("reconnect_wait", 0.5)
        self.pull_expires = opts.number("pull_expires", 5.0, minimum=0.01)
        self.stream_prefix = opts.text("stream_prefix", "interlink:")
        opts.done()
        parts = opts.base.split("://", 1)
        scheme, rest = parts if len(parts) == 2 else ("nats", parts[0])
        auth, _, hosts = rest.rpartition("@")
        auth = f"{auth}@" if auth else ""
        self._servers = [f"{scheme}://{auth}{host.strip('/')}" for host in hosts.split(",") if host]
        self._nc: Client | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._js: Any = None
        self._acks: PubAcks | None = None
        self._lock = asyncio.Lock()
        self._streams: dict[str, str] = {}
        self._consumers: set[tuple[str, str]] = set()
        self._signals: set[Signal] = set()
        self.generation = 0  # bumped on every reconnect: pullers re-request their credit

    # -- connection ---------------------------------------------------------------------

    def _open(self) -> bool:
        return self._nc is not None

    async def connect(self) -> None:
        """Connect (once); the client then reconnects by itself for as long as it lives."""
        if self._open():
            return
        async with self._lock:
            if self._open():  # connected while this call waited for the lock
                return
            nc = Client()
            try:
                await asyncio.wait_for(
                    nc.connect(
                        servers=self._servers,
                        name="interlink",
                        connect_timeout=max(1, int(self.connect_timeout)),
                        reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                        max_reconnect_attempts=-1,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    ),
                    self.connect_timeout,
                )
            except (TimeoutError, *SEND_ERRORS) as exc:
                with contextlib.suppress(Exception):
                    await nc.close()
                raise BackendUnavailable(redact(self._url), f"cannot connect: {exc!r}") from exc
            self._js = nc.jetstream(timeout=self.timeout)
            acks = PubAcks(nc)
            await acks.start()
            self._acks = acks
            self._nc = nc
            self._keeper = close_at_loop_end(self.aclose)

    async def aclose(self) -> None:
        """Flush what is buffered (acks included) and close the connection."""
        nc, self._nc = self._nc, None
        self._acks = None
        keeper, self._keeper = self._keeper, None
        stop_keeper(keeper)
        self._streams.clear()
        self._consumers.clear()
        if nc is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.flush(), 2.0)
        with contextlib.suppress(Exception):
            await nc.close()

    @property
    def nc(self) -> Client | None:
        """The client, while connected."""
        return self._nc

    def _acks_or_raise(self) -> PubAcks:
        acks = self._acks
        if acks is None:
            raise BackendUnavailable(redact(self._url), "not connected")
        return acks

    def _nc_or_raise(self) -> Client:
        nc = self._nc
        if nc is None:
            raise BackendUnavailable(redact(self._url), "not connected")
        return nc

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not our own aclose()
            log.warning("nats: disconnected from %s; reconnecting", redact(self._url))

    async def _on_reconnected(self) -> None:
        log.warning("nats: reconnected to %s", redact(self._url))
        self.generation += 1
        for signal in self._signals:
            signal.wake()

    async def _api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        nc = self._nc_or_raise()
        msg = await nc.request(
            f"{API}.{subject}", json.dumps(body or {}).encode(), timeout=self.timeout
        )
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    # -- streams and consumers ----------------------------------------------------------

    def stream_name(self, topic: str) -> str:
        """The stream interlink creates for ``topic`` (``.`` is not allowed in stream names;
        ``:`` is, and no topic contains it, so the mapping is one to one)."""
        return self.stream_prefix + topic.replace(".", ":")

    async def _ensure_stream(self, topic: str) -> str:
        stream = self._streams.get(topic)
        if stream is not None:
            return stream
        if not _LITERAL.match(topic):
            raise ValueError(f"'topic' must be dot-separated words of [A-Za-z0-9_-]: {topic!r}")
        await self.connect()
        js = self._js
        try:
            stream = await js.find_stream_name_by_subject(topic)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self.stream_name(topic),
                subjects=[topic],
                storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
                num_replicas=self.replicas,
                max_age=self.max_age,
                max_msgs=self.max_msgs or -1,
                duplicate_window=self.duplicate_window,
                description=f"interlink topic {topic}",
            )
            # Created meanwhile by another process (or differently): use what is there.
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_stream(config)
            stream = await js.find_stream_name_by_subject(topic)
        name = str(stream)
        self._streams[topic] = name
        return name

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the stream and the group's durable consumer. The topic's first group
        starts at the beginning of the stream; a later group at its end (it gets what is
        published from now on, not the topic's whole history)."""
        stream = await self._ensure_stream(topic)
        if (stream, group) in self._consumers:
            return
        js = self._js
        try:
            await js.consumer_info(stream, group)
        except nats.js.errors.NotFoundError:
            info = await js.stream_info(stream)
            first = info.state.consumer_count == 0
            config = ConsumerConfig(
                durable_name=group,
                name=group,
                deliver_policy=DeliverPolicy.ALL if first else DeliverPolicy.NEW,
                ack_wait=self.ack_wait,
                max_deliver=-1,
                max_ack_pending=-1,
                filter_subject=topic,
                description=f"interlink group {group} of {topic}",
            )
            try:
                await js.add_consumer(stream, config)
            except nats.js.errors.BadRequestError:
                await js.consumer_info(stream, group)  # created meanwhile: fine if it exists
        self._consumers.add((stream, group))

    # -- publishing ---------------------------------------------------------------------

    async def _publish_one(self, topic: str, data: bytes, message_id: str) -> None:
        stream = await self._ensure_stream(topic)
        for last in (False, True):
            failed = await self._acks_or_raise().send(topic, [(data, message_id)], self.timeout)
            if not failed:
                return
            error = failed[0][1]
            if not isinstance(error, nats.js.errors.NoStreamResponseError):
                raise PublishError(topic, f"{type(error).__name__}: {error} (stream {stream})")
            # The stream vanished (deleted, or a memory-storage server restarted).
            if last:
                raise PublishError(topic, "no stream answered") from error
            self._streams.pop(topic, None)
            stream = await self._ensure_stream(topic)

    async def publish(
        self,
        topic: str,
        data: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str],
        message_id: str,
    ) -> None:
        """Publish and wait for the PubAck; the id deduplicates a retried publish."""
        await self._publish_one(topic, data, message_id)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Send every message, then gather their PubAcks (no round trip per message)."""
        await self._ensure_stream(topic)
        todo = list(items)
        for last in (False, True):
            failed, error = await self._window(topic, todo)
            if not failed:
                return
            if last or not isinstance(error, nats.js.errors.NoStreamResponseError):
                raise PublishError(
                    topic, f"{len(failed)} of {len(items)} not confirmed: {error!r}"
                ) from error
            self._streams.pop(topic, None)
            await self._ensure_stream(topic)
            todo = failed

    async def _window(
        self, topic: str, items: Sequence[OutgoingMessage]
    ) -> tuple[list[OutgoingMessage], BaseException | None]:
        pairs = [(item.data, item.message_id) for item in items]
        failed = await self._acks_or_raise().send(topic, pairs, self.timeout)
        return [items[index] for index, _ in failed], failed[0][1] if failed else None

    # -- consuming ----------------------------------------------------------------------

    def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Pull deliveries for ``group`` with up to ``prefetch`` requested ahead."""
        return pull(self, topic, group, max(1, prefetch))

    def forget_consumer(self, topic: str, group: str) -> None:
        """The durable consumer is gone on the server: ``ensure_group`` creates it again."""
        self._consumers.discard((self._streams.get(topic, ""), group))

    # -- the DLQ and topics (in _nats_dlq) ----------------------------------------------

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters."""
        return await _nats_dlq.dlq_list(self, topic, limit)

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish each chosen letter, then delete it from the DLQ stream. The publish id
        names the DLQ entry, so a replay interrupted between the two steps and run again
        within the duplicate window is deduplicated by the server."""
        return await _nats_dlq.dlq_replay(self, topic, ids)

    async def dlq_purge(self, topic: str) -> int:
        """Purge the DLQ stream."""
        return await _nats_dlq.dlq_purge(self, topic)

    async def topics(self) -> list[str]:
        """Topics of the streams interlink created (by their name prefix), DLQs included."""
        return await _nats_dlq.topics(self)
