"""The public surface of ``interlink.messaging`` is pinned: adding a name is a decision."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize(
    ("scheme", "module", "library", "hint"),
    [
        ("nats", "nats", "nats", "needs nats-py: pip install 'interlink[nats]'"),
        ("amqp", "rabbitmq", "aio_pika", "needs aio-pika: pip install 'interlink[rabbitmq]'"),
        ("redis", "redis", "redis", "needs redis: pip install 'interlink[redis]'"),
        ("kafka", "kafka", "aiokafka", "needs aiokafka: pip install 'interlink[kafka]'"),
    ],
)
def test_a_backend_without_its_client_library_says_how_to_install_it(
    scheme: str, module: str, library: str, hint: str
) -> None:
    """Opening a server backend whose extra is not installed names the package and the extra."""
    import subprocess
    import sys

    # A None entry in sys.modules makes `import <library>` fail as if it were not installed.
    code = (
        f"import sys; sys.modules[{library!r}] = None; "
        "from interlink.messaging import Backend; "
        f"Backend.from_url('{scheme}://127.0.0.1')"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert out.returncode == 1
    assert f"ImportError: interlink.messaging's {scheme}:// backend {hint}" in out.stderr
