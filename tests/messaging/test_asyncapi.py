"""The AsyncAPI 3 document built from a broker's publishers and subscribers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from interlink import Retry
from interlink.messaging import Broker
from interlink.messaging.asyncapi import asyncapi


class Address(BaseModel):
    street: str


class OrderPlaced(BaseModel):
    """An order was placed."""

    order_id: int
    address: Address


def build() -> Broker:
    broker = Broker.from_url("sqlite:///events.db", title="orders", version="2.1.0")
    broker.publisher("orders", OrderPlaced, description="Every accepted order.")

    @broker.subscriber(
        "orders", group="payments", max_deliveries=3, retry=Retry(retries=2), concurrency=4
    )
    async def charge(order: OrderPlaced) -> None:
        """Charge the customer."""

    @broker.subscriber("audit", group="archive", idempotent=True)
    async def archive(raw: bytes) -> None: ...

    return broker


def test_document_header_and_server() -> None:
    """AsyncAPI 3.0.0 with the broker's title, version and server."""
    doc = asyncapi(build())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"] == {"title": "orders", "version": "2.1.0"}
    assert doc["servers"] == {
        "default": {"host": "localhost", "protocol": "sqlite", "pathname": "/events.db"}
    }


def test_channels_and_operations() -> None:
    """One channel per topic (plus its DLQ), a send per publisher, a receive per subscriber."""
    doc = asyncapi(build())
    assert set(doc["channels"]) == {"orders", "orders.dlq", "audit", "audit.dlq"}
    assert doc["channels"]["orders"]["messages"] == {
        "OrderPlaced": {"$ref": "#/components/messages/OrderPlaced"}
    }
    ops = doc["operations"]
    assert set(ops) == {
        "send.orders.OrderPlaced",
        "receive.orders.payments.charge",
        "receive.audit.archive.archive",
    }
    assert ops["send.orders.OrderPlaced"]["action"] == "send"
    receive = ops["receive.orders.payments.charge"]
    assert receive["action"] == "receive"
    assert receive["description"] == "Charge the customer."
    assert receive["channel"] == {"$ref": "#/channels/orders"}
    extra: dict[str, Any] = receive["x-interlink"]
    assert (extra["group"], extra["maxDeliveries"], extra["concurrency"]) == ("payments", 3, 4)
    assert extra["retry"]["retries"] == 2
    assert extra["deadLetterChannel"] == "orders.dlq"
    assert ops["receive.audit.archive.archive"]["x-interlink"]["idempotent"] is True


def test_message_schemas_come_from_the_models() -> None:
    """Pydantic models become component schemas (nested ones too); bytes are binary."""
    doc = asyncapi(build())
    schemas = doc["components"]["schemas"]
    assert schemas["OrderPlaced"]["properties"]["address"] == {
        "$ref": "#/components/schemas/Address"
    }
    assert schemas["Address"]["required"] == ["street"]
    messages = doc["components"]["messages"]
    assert messages["OrderPlaced"]["payload"] == {"$ref": "#/components/schemas/OrderPlaced"}
    assert messages["OrderPlaced"]["contentType"] == "application/json"
    assert messages["Bytes"]["payload"] == {"type": "string", "format": "binary"}
    assert messages["Bytes"]["contentType"] == "application/octet-stream"
    headers = messages["Bytes"]["headers"]
    assert {"ce_id", "ce_source", "ce_specversion", "ce_type", "ce_time"} <= set(
        headers["properties"]
    )
    assert headers["required"] == ["ce_id", "ce_source", "ce_specversion", "ce_type"]


def test_headers_are_named_by_the_brokers_protocol_binding() -> None:
    """A NATS broker's document names the ce- headers, a RabbitMQ one cloudEvents: ones."""
    nats = Broker.from_url("nats://127.0.0.1:4222")
    amqp = Broker.from_url("amqp://guest:guest@127.0.0.1:5672/")
    for broker in (nats, amqp):

        @broker.subscriber("orders", group="g")
        async def handle(order: OrderPlaced) -> None: ...

    nats_headers = asyncapi(nats)["components"]["messages"]["OrderPlaced"]["headers"]
    amqp_headers = asyncapi(amqp)["components"]["messages"]["OrderPlaced"]["headers"]
    assert "ce-traceparent" in nats_headers["properties"]
    assert "cloudEvents:partitionkey" in amqp_headers["properties"]


def test_every_reference_resolves() -> None:
    """Every $ref in the document points at something that exists in it."""
    doc = asyncapi(build())
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert target, ref
