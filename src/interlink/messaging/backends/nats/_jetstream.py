"""One JetStream connection: its client, the streams and durable consumers interlink made on
it, and confirmed publishing. The backend (``interlink.messaging.backends.nats``), its pullers
and its dead letters all work through one ``JetStream``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from interlink.messaging.backend import BackendUnavailable, PublishError, redact
from interlink.messaging.backends._base import ServerConnection
from interlink.messaging.backends._options import (
    UrlOptions,
    close_at_loop_end,
    connect_failure,
    stop_keeper,
)
from interlink.messaging.backends._wait import Signal
from interlink.messaging.backends.nats._publish import MSG_ID, SEND_ERRORS, PubAcks
from interlink.messaging.envelope import OutgoingMessage

__all__ = ["API", "JetStream"]

log = logging.getLogger("interlink.messaging.nats")

API = "$JS.API"
#: The consumer that keeps what is published before a topic's first group (interest streams).
BACKLOG = "interlink:backlog"  # ":" is in no group name

_LITERAL = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class JetStream(ServerConnection):
    """A NATS connection with JetStream: the URL's options, the streams and consumers made,
    confirmed publishing. Pullers register a ``Signal`` in ``signals`` to be woken on a
    reconnect, when ``generation`` changes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        opts = UrlOptions(url, "nats")
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
        self.retention = opts.choice("retention", "interest", ("interest", "limits"))
        self.dlq_max_age, self.dlq_max_count = opts.dlq_retention()
        opts.done()
        parts = opts.base.split("://", 1)
        scheme, rest = parts if len(parts) == 2 else ("nats", parts[0])
        auth, _, hosts = rest.rpartition("@")
        auth = f"{auth}@" if auth else ""
        self._servers = [f"{scheme}://{auth}{host.strip('/')}" for host in hosts.split(",") if host]
        self._nc: Client | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._js: Any = None  # nats-py's JetStreamContext
        self._acks: PubAcks | None = None
        self._streams: dict[str, str] = {}
        self._consumers: set[tuple[str, str]] = set()
        self.signals: set[Signal] = set()
        self._last_error: Exception | None = None
        self.generation = 0  # bumped on every reconnect: pullers re-request their credit

    # -- connection ---------------------------------------------------------------------

    def _open(self) -> bool:
        return self._nc is not None

    async def _dial(self) -> None:
        # Once connected, the client reconnects by itself for as long as it lives.
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
            # nats-py keeps retrying until the timeout; the error it met is in _last_error
            cause = exc if self._last_error is None else self._last_error
            tried = ", ".join(redact(server) for server in self._servers)
            reason = connect_failure(cause, tried=tried, within=self.connect_timeout)
            raise BackendUnavailable(redact(self._url), reason) from exc
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

    def client(self) -> Client:
        """The client; ``BackendUnavailable`` when not connected."""
        nc = self._nc
        if nc is None:
            raise BackendUnavailable(redact(self._url), "not connected")
        return nc

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        log.debug("nats: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._nc is not None:  # not our own aclose()
            log.warning("nats: disconnected from %s; reconnecting", redact(self._url))

    async def _on_reconnected(self) -> None:
        log.warning("nats: reconnected to %s", redact(self._url))
        self.generation += 1
        for signal in self.signals:
            signal.wake()

    @property
    def js(self) -> Any:
        """nats-py's JetStream context, while connected."""
        return self.require(self._js)

    async def api(self, subject: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        nc = self.client()
        msg = await nc.request(
            f"{API}.{subject}", json.dumps(body or {}).encode(), timeout=self.timeout
        )
        reply: dict[str, Any] = json.loads(msg.data)
        return reply

    def stream_of(self, topic: str) -> str:
        """The stream of ``topic``, once ``ensure_stream`` found or made it."""
        return self._streams[topic]

    # -- streams and consumers ----------------------------------------------------------

    def stream_name(self, topic: str) -> str:
        """The stream interlink creates for ``topic`` (``.`` is not allowed in stream names;
        ``:`` is, and no topic contains it, so the mapping is one to one)."""
        return self.stream_prefix + topic.replace(".", ":")

    async def ensure_stream(self, topic: str) -> str:
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
            dlq = topic.endswith(".dlq")
            interest = self.retention == "interest" and not dlq
            config = StreamConfig(
                name=self.stream_name(topic),
                subjects=[topic],
                # A topic drops what every group has acked; a DLQ (read by no consumer)
                # keeps its letters for their age and count limits.
                retention=RetentionPolicy.INTEREST if interest else RetentionPolicy.LIMITS,
                storage=StorageType.FILE if self.storage == "file" else StorageType.MEMORY,
                num_replicas=self.replicas,
                max_age=self.dlq_max_age if dlq else self.max_age,
                max_msgs=(self.dlq_max_count if dlq else self.max_msgs) or -1,
                duplicate_window=self.duplicate_window,
                description=f"interlink topic {topic}",
            )
            # Created meanwhile by another process (or differently): use what is there.
            created = False
            with contextlib.suppress(nats.js.errors.BadRequestError):
                await js.add_stream(config)
                created = True
            if created and interest:
                # An interest-based stream drops a message nobody is interested in: this
                # consumer holds the messages published before the topic's first group,
                # which takes them over (``ensure_group``), as RabbitMQ's backlog queue does.
                await js.add_consumer(
                    config.name,
                    ConsumerConfig(
                        durable_name=BACKLOG,
                        name=BACKLOG,
                        deliver_policy=DeliverPolicy.ALL,
                        filter_subject=topic,
                        description=f"interlink backlog of {topic} until its first group",
                    ),
                )
            stream = await js.find_stream_name_by_subject(topic)
        name = str(stream)
        self._streams[topic] = name
        return name

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the stream and the group's durable consumer. The topic's first group
        starts at the beginning of the stream; a later group at its end (it gets what is
        published from now on, not the topic's whole history)."""
        stream = await self.ensure_stream(topic)
        if (stream, group) in self._consumers:
            return
        js = self._js
        try:
            await js.consumer_info(stream, group)
        except nats.js.errors.NotFoundError:
            info = await js.stream_info(stream)
            backlog = await self._has_backlog(stream)
            first = info.state.consumer_count == (1 if backlog else 0)
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
            if backlog:  # the group holds the backlog now
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_consumer(stream, BACKLOG)
        self._consumers.add((stream, group))

    async def _has_backlog(self, stream: str) -> bool:
        try:
            await self._js.consumer_info(stream, BACKLOG)
        except nats.js.errors.NotFoundError:
            return False
        return True

    # -- publishing ---------------------------------------------------------------------

    async def publish_one(
        self, topic: str, data: bytes, headers: Mapping[str, str], dedupe_id: str | None = None
    ) -> None:
        """Publish and wait for the PubAck. ``dedupe_id`` goes in ``Nats-Msg-Id``, which the
        server deduplicates by within the stream's duplicate window: the backend's own moves
        (dead-lettering, replay) use it, so one repeated after a lost reply lands once; user
        publishes do not (no backend deduplicates those: the idempotent consumer does)."""
        stream = self._streams.get(topic) or await self.ensure_stream(topic)
        if dedupe_id is not None:
            headers = {**headers, MSG_ID: dedupe_id}
        for last in (False, True):
            error = await self.require(self._acks).send_one(topic, data, headers, self.timeout)
            if error is None:
                return
            if not isinstance(error, nats.js.errors.NoStreamResponseError):
                raise PublishError(topic, f"{type(error).__name__}: {error} (stream {stream})")
            # The stream vanished (deleted, or a memory-storage server restarted).
            if last:
                raise PublishError(topic, "no stream answered") from error
            self._streams.pop(topic, None)
            stream = await self.ensure_stream(topic)

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Send every message, then gather their PubAcks (no round trip per message)."""
        await self.ensure_stream(topic)
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
            await self.ensure_stream(topic)
            todo = failed

    async def _window(
        self, topic: str, items: Sequence[OutgoingMessage]
    ) -> tuple[list[OutgoingMessage], BaseException | None]:
        pairs = [(item.data, item.headers) for item in items]
        failed = await self.require(self._acks).send(topic, pairs, self.timeout)
        return [items[index] for index, _ in failed], failed[0][1] if failed else None

    def forget_consumer(self, topic: str, group: str) -> None:
        """The durable consumer is gone on the server: ``ensure_group`` creates it again."""
        self._consumers.discard((self._streams.get(topic, ""), group))
