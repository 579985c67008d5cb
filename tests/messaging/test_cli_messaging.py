"""`interlink dlq ...`, `interlink topics` and `interlink asyncapi` against a SQLite broker."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interlink.cli.main import app
from interlink.messaging import Broker

from .contract import BackendContract, Order

runner = CliRunner()


@pytest.fixture
def broker_url(tmp_path: Path) -> str:
    """A SQLite broker whose `orders.dlq` holds two dead letters (ids m0 and m1)."""
    url = f"sqlite:///{tmp_path}/broker.db"

    async def fill() -> None:
        broker = Broker.from_url(url)

        @broker.subscriber("orders", group="payments", max_deliveries=1)
        async def handle(message: Order) -> None:
            raise ValueError(f"card {message.order_id} declined")

        async with broker:
            for i in range(2):
                await broker.publish("orders", Order(order_id=i), message_id=f"m{i}", key="k")
            await BackendContract.settle(broker, "orders", 2)

    asyncio.run(fill())
    return url


def test_dlq_list_as_json(broker_url: str) -> None:
    """`dlq list --json` prints each dead letter's facts."""
    result = runner.invoke(app, ["dlq", "list", "orders", "--broker", broker_url, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["id"], r["attempts"], r["error_type"]) for r in rows] == [
        ("m0", 1, "ValueError"),
        ("m1", 1, "ValueError"),
    ]
    assert rows[0]["group"] == "payments"
    assert rows[0]["type"] == "Order"
    assert "card 0 declined" in rows[0]["reason"]


def test_dlq_list_piped_prints_whole_ids_and_the_size(tmp_path: Path) -> None:
    """Piped (not a terminal), `dlq list` prints tab-separated rows with whole ids, however
    narrow the terminal would be, and the DLQ's size; `--limit` shows the oldest."""
    url = f"sqlite:///{tmp_path}/broker.db"
    ids = [f"{i:032x}" for i in range(3)]

    async def fill() -> None:
        broker = Broker.from_url(url)

        @broker.subscriber("orders", group="payments", max_deliveries=1)
        async def handle(message: Order) -> None:
            raise ValueError("declined\nwith a second line")

        async with broker:
            for mid in ids:
                await broker.publish("orders", Order(order_id=1), message_id=mid)
            await BackendContract.settle(broker, "orders", 3)

    asyncio.run(fill())
    result = runner.invoke(
        app, ["dlq", "list", "orders", "-b", url, "-n", "2"], env={"COLUMNS": "30"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("\t") == ["id", "group", "attempts", "error_type", "reason", "dead_at"]
    assert [line.split("\t")[0] for line in lines[1:]] == ids[:2]
    assert lines[1].split("\t")[4] == "declined with a second line (after 1 deliveries)"
    assert "3 dead letter(s) in orders.dlq, the oldest 2 shown" in result.output


def test_dlq_show_prints_the_payload(broker_url: str) -> None:
    """`dlq show` prints one dead letter with its headers and payload."""
    result = runner.invoke(app, ["dlq", "show", "orders", "m1", "--broker", broker_url])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert json.loads(shown["payload"]) == {"order_id": 1, "item": "pizza"}
    assert shown["key"] == "k"


def test_dlq_show_unknown_id_fails(broker_url: str) -> None:
    """An id that is not in the DLQ is an error."""
    result = runner.invoke(app, ["dlq", "show", "orders", "nope", "--broker", broker_url])
    assert result.exit_code == 1
    assert "no dead letter 'nope'" in result.output


def test_dlq_replay_by_id_then_all_is_safe_twice(broker_url: str) -> None:
    """Replay of one id, then of the rest, then again: 1, 1, 0 messages."""
    counts = []
    for extra in (["--id", "m0"], [], []):
        result = runner.invoke(app, ["dlq", "replay", "orders", "--broker", broker_url, *extra])
        assert result.exit_code == 0, result.output
        counts.append(result.output.strip())
    assert counts == [
        "replayed 1 message(s) to orders",
        "replayed 1 message(s) to orders",
        "replayed 0 message(s) to orders",
    ]


def test_dlq_purge_asks_unless_yes(broker_url: str) -> None:
    """Purge asks for confirmation; `--yes` skips it."""
    refused = runner.invoke(app, ["dlq", "purge", "orders", "-b", broker_url], input="n\n")
    assert refused.exit_code == 1
    done = runner.invoke(app, ["dlq", "purge", "orders", "-b", broker_url, "--yes"])
    assert done.exit_code == 0
    assert "purged 2 dead letter(s) from orders.dlq" in done.output


def test_topics_lists_dlqs(broker_url: str) -> None:
    """`topics` lists the topic and its DLQ; the URL may come from INTERLINK_BROKER."""
    result = runner.invoke(app, ["topics", "--json"], env={"INTERLINK_BROKER": broker_url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == ["orders", "orders.dlq"]


def test_bad_broker_url_is_an_error_not_a_traceback() -> None:
    """An unknown scheme exits 1 with the reason."""
    result = runner.invoke(app, ["topics", "--broker", "pulsar://localhost"])
    assert result.exit_code == 1
    assert "'url' must start with one of" in result.output


def test_asyncapi_prints_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`asyncapi MODULE:BROKER` imports the module from the current directory."""
    (tmp_path / "shop_events.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from interlink.messaging import Broker

            class Paid(BaseModel):
                amount: int

            broker = Broker.from_url("memory://", title="shop")

            @broker.subscriber("paid", group="mail")
            async def mail(message: Paid) -> None: ...
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "asyncapi.json"
    result = runner.invoke(app, ["asyncapi", "shop_events:broker", "--output", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["info"]["title"] == "shop"
    assert "receive.paid.mail.mail" in doc["operations"]
    missing = runner.invoke(app, ["asyncapi", "shop_events:nothing"])
    assert missing.exit_code == 1
    assert "is not an interlink Broker" in missing.output


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "url",
    [
        "nats://user:s3cret@127.0.0.1:{port}?connect_timeout=1",
        "redis://:s3cret@127.0.0.1:{port}/0",
        "amqp://guest:s3cret@127.0.0.1:{port}/?connect_timeout=1",
    ],
    ids=["nats", "redis", "amqp"],
)
def test_an_unreachable_broker_says_what_was_tried_and_what_failed(url: str) -> None:
    """Nothing listening: exit 1 naming the address tried (password masked) and "refused"."""
    port = _free_port()
    result = runner.invoke(app, ["topics", "--broker", url.format(port=port)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"cannot connect to {url.split('://', maxsplit=1)[0]}://" in text
    assert f"127.0.0.1:{port}" in text
    assert "connection refused" in text
    assert "s3cret" not in text
    assert "***" in text
