"""The public surface of ``interlink.messaging`` is pinned: adding a name is a decision."""

from __future__ import annotations

import interlink.messaging

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    """`__all__` lists exactly the expected names, sorted, and each one exists."""
    assert interlink.messaging.__all__ == EXPECTED
    for name in EXPECTED:
        assert getattr(interlink.messaging, name) is not None


def test_importing_messaging_loads_no_broker_client() -> None:
    """`import interlink.messaging` needs no broker client, database driver or pydantic."""
    import subprocess
    import sys

    code = (
        "import sys, interlink.messaging; "
        "print(sorted({'nats','aio_pika','redis','asyncpg','pydantic'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
