"""Events over brokers: at-least-once delivery, retry with backoff, dead-letter queue and
replay, idempotent consumers, on memory, SQLite, NATS JetStream, RabbitMQ and Redis Streams.

::

    broker = Broker.from_url("sqlite:///events.db")

    @broker.subscriber("orders", group="payments", max_deliveries=5, idempotent=True)
    async def charge(order: OrderPlaced) -> None: ...

    await broker.publish("orders", OrderPlaced(...), key=order_id)

Backends and their client libraries are imported only when their URL is used.
"""

from interlink.messaging.backend import (
    Backend,
    BackendUnavailable,
    ConsumerLag,
    Delivery,
    MessagingError,
    PublishError,
)
from interlink.messaging.broker import Broker, Publisher
from interlink.messaging.consumer import MessageInfo, Subscription, current_message
from interlink.messaging.envelope import DeadLetter, Envelope, EnvelopeError
from interlink.messaging.idempotency import IdempotencyStore, InProgress, current_transaction

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Broker",
    "ConsumerLag",
    "DeadLetter",
    "Delivery",
    "Envelope",
    "EnvelopeError",
    "IdempotencyStore",
    "InProgress",
    "MessageInfo",
    "MessagingError",
    "PublishError",
    "Publisher",
    "Subscription",
    "current_message",
    "current_transaction",
]
