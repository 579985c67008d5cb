"""One RabbitMQ connection: the URL's options, the robust connection and its confirming
channel, what interlink declared on the server (the layout is in the backend's docstring: a
topic's backlog queue, a group's queue, DLQs, delay steps, the topics registry), and confirmed
publishing. The backend (``interlink.messaging.backends.rabbitmq``), its deliveries and its
dead letters all work through one ``RabbitConnection``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from interlink.messaging.backend import BackendUnavailable, PublishError, redact
from interlink.messaging.backends._base import ServerConnection
from interlink.messaging.backends._options import (
    UrlOptions,
    close_at_loop_end,
    connect_failure,
    stop_keeper,
)

__all__ = [
    "PERSISTENT",
    "PUBLISH_ERRORS",
    "RabbitConnection",
    "delay_step",
    "headers_of",
    "message_of",
]

PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
CONTENT_TYPE = "content-type"  # the headers' name for the AMQP content-type property
_STEPS = (1.0, 1.2, 1.5, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)
_MAX_DELAY_MS = 7 * 24 * 3600 * 1000

# What a publish raises while the broker is away or refuses (a channel being restored after a
# reconnect raises ChannelInvalidStateError, a RuntimeError): all become a PublishError.
PUBLISH_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


def message_of(data: bytes, headers: Mapping[str, str], message_id: str) -> aio_pika.Message:
    """A persistent message: the CloudEvents attributes as application properties, the
    content type as the AMQP ``content-type`` property (the AMQP binding's mapping)."""
    properties = dict(headers)
    content_type = properties.pop(CONTENT_TYPE, None)
    return aio_pika.Message(
        data,
        delivery_mode=PERSISTENT,
        message_id=message_id,
        headers=properties,  # type: ignore[arg-type]
        content_type=content_type,
    )


def headers_of(properties: Basic.Properties) -> dict[str, str]:
    """A received message's application properties as text, its content type included (what
    ``message_of`` takes back). Values of other AMQP types (numbers, bytes, tables) from
    foreign producers become their text."""
    out: dict[str, str] = {}
    for name, value in (properties.headers or {}).items():
        if type(value) is str:
            out[name] = value
        elif isinstance(value, bytes):
            out[name] = value.decode("utf-8", "replace")
        else:
            out[name] = str(value)
    if properties.content_type:
        out[CONTENT_TYPE] = properties.content_type
    return out


def delay_step(delay: float) -> int:
    """The delay queue for ``delay`` seconds, in ms: the next step of 1, 1.2, 1.5, 1.8, 2,
    2.5, 3, 3.5, 4, 5, 6, 7, 8 x 10^k ms at or above it (at most 25% longer than asked)."""
    ms = min(max(1, math.ceil(delay * 1000)), _MAX_DELAY_MS)
    scale = 1
    while scale * 10 <= ms:  # exact powers of ten, where log10 may round 1000 down
        scale *= 10
    return next(v for v in (round(s * scale) for s in _STEPS) if v >= ms)


log = logging.getLogger("interlink.messaging.rabbitmq")


def dlq_limits_refused(name: str, retention: Mapping[str, int], exc: BaseException) -> str:
    """What to say when an existing DLQ queue refused interlink's limits."""
    policy = json.dumps(
        {"max-length": retention["x-max-length"], "message-ttl": retention["x-message-ttl"]}
    )
    return (
        f"rabbitmq: the DLQ queue {name!r} exists with other limits than "
        f"x-max-length={retention['x-max-length']}, x-message-ttl={retention['x-message-ttl']} "
        f"ms ({exc}); RabbitMQ cannot change a queue's arguments, so its letters are kept as "
        f"that queue says. Apply the limits with a policy (where a queue argument is also set, "
        f"the smaller value wins): rabbitmqctl set_policy interlink-dlq '\\.dlq$' "
        f"'{policy}' --apply-to queues; or delete the queue once it is empty"
    )


#: Seconds an idempotency claim of a consumer that died keeps its message from the others.
#: RabbitMQ hands a dead consumer's messages back at once, so this is all the wait there is;
#: a handler that runs longer than this may see a redelivery of its message run beside it.
CLAIM_LEASE = 10.0


class RabbitConnection(ServerConnection):
    """A robust AMQP connection, its confirming channel and the topology declared on it."""

    def __init__(self, url: str, *, close: Callable[[], Awaitable[None]] | None = None) -> None:
        """``close`` is what the end of the event loop calls if nobody closed the connection
        (the backend's ``aclose``, which flushes acks first); ``aclose`` by default."""
        super().__init__(url)
        opts = UrlOptions(url, "amqp")
        self.queue_type = opts.choice("queue_type", "quorum", ("quorum", "classic"))
        self.exchange_name = opts.text("exchange", "interlink")
        self.timeout = opts.number("timeout", 10.0, minimum=0.001)
        self.connect_timeout = opts.number("connect_timeout", 5.0, minimum=0.001)
        self.reconnect_interval = opts.number("reconnect_interval", 1.0, minimum=0.01)
        self.claim_lease = opts.number("claim_lease", CLAIM_LEASE, minimum=0.001)
        self.dlq_max_age, self.dlq_max_count = opts.dlq_retention()
        opts.done()
        self._base = opts.base
        self._conn: AbstractRobustConnection | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._close = close or self.aclose
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._topics: set[str] = set()
        self._dlqs: set[str] = set()
        self._delays: dict[int, AbstractExchange] = {}

    def _open(self) -> bool:
        return self._conn is not None

    async def _dial(self) -> None:
        # A robust connection, a confirming channel, and the exchanges declared on it.
        try:
            conn = await aio_pika.connect_robust(
                self._base,
                timeout=self.connect_timeout,
                reconnect_interval=self.reconnect_interval,
                client_properties={"connection_name": "interlink"},
            )
        except (*PUBLISH_ERRORS, aio_pika.exceptions.AMQPException) as exc:
            reason = connect_failure(exc, tried=redact(self._base), within=self.connect_timeout)
            raise BackendUnavailable(redact(self._url), reason) from exc
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        unrouted = await channel.declare_exchange(
            f"{self.exchange_name}.unrouted", aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._exchange = await channel.declare_exchange(
            self.exchange_name,
            aio_pika.ExchangeType.TOPIC,
            durable=True,
            arguments={"alternate-exchange": unrouted.name},
        )
        self._channel = channel
        self._conn = conn
        self._keeper = close_at_loop_end(self._close)

    @property
    def connection(self) -> AbstractRobustConnection:
        """The robust connection, while connected."""
        return self.require(self._conn)

    @property
    def exchange(self) -> AbstractExchange:
        """The topic exchange messages are published to, while connected."""
        return self.require(self._exchange)

    async def aclose(self) -> None:
        """Forget what was declared and close the connection (the backend closed its
        subscription channels first)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        keeper, self._keeper = self._keeper, None
        stop_keeper(keeper)
        self._topics.clear()
        self._dlqs.clear()
        self._delays.clear()
        self._channel = self._exchange = None
        with contextlib.suppress(Exception):
            await conn.close()

    @property
    def channel(self) -> AbstractChannel:
        """The confirming channel publishes go through."""
        return self.require(self._channel)

    @property
    def default_exchange(self) -> AbstractExchange:
        """The AMQP default exchange (routing key = queue name)."""
        return self.channel.default_exchange

    def queue_name(self, topic: str, group: str) -> str:
        """The group's queue (``:`` is in no topic or group name, so names cannot collide)."""
        return f"{topic}:{group}"

    def arguments(self) -> dict[str, Any]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    async def ensure_topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        await self.connect()
        await self._declare_backlog(topic)
        self._topics.add(topic)

    async def ensure_dlq(self, topic: str) -> str:
        """Declare ``<topic>.dlq`` (classic: it is browsed by get-and-requeue); its name."""
        name = f"{topic}.dlq"
        if topic not in self._dlqs:
            await self._declare_dlq(name)
            self._dlqs.add(topic)
        return name

    async def delay_exchange(self, delay: float) -> AbstractExchange:
        """The fanout exchange in front of the delay queue for ``delay``."""
        ms = delay_step(delay)
        exchange = self._delays.get(ms)
        if exchange is None:
            exchange = await self._declare_delay(ms)
            self._delays[ms] = exchange
        return exchange

    async def ensure_group(self, topic: str, group: str) -> None:
        """Declare the group's queue, bind it, and take over the topic's backlog."""
        await self.ensure_topic(topic)
        name = self.queue_name(topic, group)
        channel = self.channel
        queue = await channel.declare_queue(name, durable=True, arguments=self.arguments())
        await queue.bind(self.exchange_name, routing_key=topic)
        await self._adopt_backlog(topic)

    async def queue_exists(self, queue: str) -> bool:
        """Whether ``queue`` exists (a failed passive declare closes its channel: a spare one)."""
        channel = await self.connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _register(self, name: str) -> None:
        """Write ``name`` into the topics registry (first use of a topic or DLQ)."""
        registry = f"{self.exchange_name}.topics"
        await self.channel.declare_queue(registry, durable=True)
        await self.default_exchange.publish(
            aio_pika.Message(name.encode(), delivery_mode=PERSISTENT), registry
        )

    async def _declare_backlog(self, topic: str) -> None:
        """Declare ``<topic>:#backlog``, bound to the unrouted exchange, and register the topic
        (unless the backlog exists already)."""
        backlog = f"{topic}:#backlog"
        if not await self.queue_exists(backlog):
            queue = await self.channel.declare_queue(
                backlog, durable=True, arguments=self.arguments()
            )
            await queue.bind(f"{self.exchange_name}.unrouted", routing_key=topic)
            await self._register(topic)

    async def _declare_dlq(self, name: str) -> None:
        """Declare the DLQ ``name`` with its retention (the oldest letters go first past the
        count, any past the age) and register it. RabbitMQ cannot change the arguments of a
        queue that exists: a DLQ declared with other limits (or none) keeps them, and the
        refused declaration is logged with the policy that applies these."""
        retention: dict[str, Any] = {
            "x-max-length": self.dlq_max_count,
            "x-message-ttl": int(self.dlq_max_age * 1000),
        }
        if not await self.queue_exists(name):
            await self.channel.declare_queue(name, durable=True, arguments=retention)
            await self._register(name)
            return
        channel = await self.connection.channel()  # a refused declaration closes its channel
        try:
            await channel.declare_queue(name, durable=True, arguments=retention)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            log.warning("%s", dlq_limits_refused(name, retention, exc))
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _declare_delay(self, ms: int) -> AbstractExchange:
        """Declare the delay step ``ms``: a fanout exchange and a queue whose message TTL is
        ``ms``, dead-lettering back by routing key; the exchange."""
        channel = self.channel
        name = f"{self.exchange_name}.delay.{ms}"
        arguments: dict[str, Any] = {"x-message-ttl": ms, "x-dead-letter-exchange": ""}
        if self.queue_type == "quorum":
            arguments.update(
                {
                    "x-queue-type": "quorum",
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                }
            )
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(exchange)
        return exchange

    async def _adopt_backlog(self, topic: str) -> None:
        """Move what waited in ``<topic>:#backlog`` to the topic's groups (get, publish
        confirmed, ack: a crash in between repeats a message, never drops one)."""
        channel = self.channel
        backlog = await channel.get_queue(f"{topic}:#backlog", ensure=False)
        exchange = self.exchange
        while True:
            message = await backlog.get(no_ack=False, fail=False)
            if message is None:
                return
            copy = aio_pika.Message(
                message.body,
                delivery_mode=PERSISTENT,
                message_id=message.message_id,
                headers=message.headers,
                content_type=message.content_type,
            )
            await self.confirm(exchange, copy, topic, topic)
            await message.ack()

    async def confirm(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, topic: str
    ) -> None:
        """Publish and wait for the broker's confirm; any failure is a ``PublishError``."""
        try:
            await exchange.publish(message, routing_key, timeout=self.timeout)
        except PUBLISH_ERRORS as exc:
            raise PublishError(topic, f"{type(exc).__name__}: {exc}") from exc
