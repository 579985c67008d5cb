"""The transactional outbox: write an event in the same transaction as the state change, and a
relay that publishes it afterwards, at least once, in order per key.

::

    outbox = Outbox()
    with conn:                                          # the service's own transaction
        conn.execute("INSERT INTO orders ...")
        outbox.add(conn, "orders.created", OrderCreated(...), key=order_id)

    relay = OutboxRelay("sqlite:///orders.db", broker)  # or postgresql://...
    await relay.run()

Consumers subscribe with ``idempotent=True`` (the inbox), so the relay's at-least-once
publishing yields effects exactly once. See ``docs/consistency.md``.
"""

from interlink.outbox.outbox import Outbox
from interlink.outbox.relay import PUBLISH_RETRY, OutboxRelay, RelayStats
from interlink.outbox.sink import RelayTarget
from interlink.outbox.stores import OutboxStore

__all__ = [
    "PUBLISH_RETRY",
    "Outbox",
    "OutboxRelay",
    "OutboxStore",
    "RelayStats",
    "RelayTarget",
]
