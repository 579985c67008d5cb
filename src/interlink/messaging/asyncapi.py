"""An AsyncAPI 3.0 document for a broker's declared publishers and subscribers.

Channels are topics (plus ``<topic>.dlq`` for topics with subscribers), operations are
``send`` (``broker.publisher``) and ``receive`` (``broker.subscriber``), and message schemas
come from the pydantic models (``bytes`` handlers get a binary payload). The interlink options
of a subscriber (group, retry, max deliveries, concurrency, idempotency) ride in ``x-interlink``
so the document also says how failures are handled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from interlink.messaging.backend import redact
from interlink.messaging.broker import Broker
from interlink.messaging.envelope import FIELDS, SPECVERSION, Binding, Envelope

__all__ = ["asyncapi"]

_REF = "#/components/schemas/{model}"


def _headers(binding: Binding) -> dict[str, Any]:
    """The message headers as the broker's backend writes them: the CloudEvents attributes
    in binary content mode, named by the protocol's binding, and the user's own."""

    def text(description: str, **more: Any) -> dict[str, Any]:
        return {"type": "string", "description": description, **more}

    properties: dict[str, Any] = {
        binding.id: text("Message id (CloudEvents id), kept by retries and replays."),
        binding.source: text("CloudEvents source: the publishing broker's source."),
        binding.spec: text("CloudEvents specversion.", const=SPECVERSION),
        binding.type: text("Payload type name (the model's class, bytes or str)."),
        binding.time: text("Publish time (CloudEvents time, RFC 3339).", format="date-time"),
        binding.key: text("Ordering key (CloudEvents partitionkey extension)."),
        binding.cid: text("Correlation id (x-request-id) of the work that published it."),
        binding.attempt: text("Delivery a re-published retry copy starts at (absent: 1)."),
        binding.traceparent: text("W3C trace context: traceparent."),
        binding.tracestate: text("W3C trace context: tracestate."),
    }
    if binding.content_type is not None:
        properties[binding.content_type] = text("CloudEvents datacontenttype.")
    return {
        "type": "object",
        "description": "CloudEvents 1.0 binary content mode: the body is the payload itself; "
        "other headers are the user's. Structured mode (application/cloudevents+json) and a "
        "bare payload without these headers are accepted too.",
        "properties": properties,
        "required": [binding.id, binding.source, binding.spec, binding.type],
        "additionalProperties": {"type": "string"},
    }


def _name(message_type: Any) -> str:
    if message_type in (bytes, Envelope):
        return "Bytes"
    if message_type is str:
        return "Text"
    return str(getattr(message_type, "__name__", None) or repr(message_type))


def _schemas(types: Iterable[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(message name -> payload schema or $ref, shared component schemas)."""
    payloads: dict[str, Any] = {}
    components: dict[str, Any] = {}
    for message_type in types:
        name = _name(message_type)
        if name in payloads:
            continue
        if name == "Bytes":
            payloads[name] = {"type": "string", "format": "binary"}
            continue
        if name == "Text":
            payloads[name] = {"type": "string"}
            continue
        from pydantic import TypeAdapter

        schema = TypeAdapter(message_type).json_schema(ref_template=_REF)
        components.update(schema.pop("$defs", {}))
        if hasattr(message_type, "model_json_schema"):
            components[name] = schema
            payloads[name] = {"$ref": _REF.format(model=name)}
        else:
            payloads[name] = schema
    return payloads, components


def _server(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    parts = urlsplit(redact(url))
    host = parts.netloc or "localhost"
    server: dict[str, Any] = {"host": host, "protocol": parts.scheme}
    if parts.path and parts.scheme in {"sqlite", "memory"}:
        server["pathname"] = parts.path
    return {"default": server}


def asyncapi(broker: Broker, *, description: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``broker`` as a JSON-ready dict."""
    publishers, subscribers = broker.publishers, broker.subscriptions
    payloads, schemas = _schemas(
        [p.message_type for p in publishers] + [s.message_type for s in subscribers]
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    binding = getattr(broker.backend, "binding", FIELDS)
    headers = _headers(binding if isinstance(binding, Binding) else FIELDS)

    def channel(topic: str, message_type: Any) -> str:
        name = _name(message_type)
        messages.setdefault(
            name,
            {
                "name": name,
                "contentType": "application/octet-stream"
                if name == "Bytes"
                else "application/json",
                "headers": headers,
                "payload": payloads[name],
            },
        )
        entry = channels.setdefault(topic, {"address": topic, "messages": {}})
        entry["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        return name

    for pub in publishers:
        name = channel(pub.topic, pub.message_type)
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{pub.topic}"},
            "messages": [{"$ref": f"#/channels/{pub.topic}/messages/{name}"}],
        }
        if pub.description:
            operation["description"] = pub.description
        operations[f"send.{pub.topic}.{name}"] = operation
    for sub in subscribers:
        name = channel(sub.topic, sub.message_type)
        handler = getattr(sub.handler, "__name__", "handler")
        operation = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{sub.topic}"},
            "messages": [{"$ref": f"#/channels/{sub.topic}/messages/{name}"}],
            "x-interlink": {
                "group": sub.group,
                "maxDeliveries": sub.max_deliveries,
                "concurrency": sub.concurrency,
                "prefetch": sub.prefetch,
                "retry": sub.retry.describe(),
                "idempotent": sub.idempotency is not None,
                "deadLetterChannel": f"{sub.topic}.dlq",
            },
        }
        if sub.description:
            operation["description"] = sub.description
        operations[f"receive.{sub.topic}.{sub.group}.{handler}"] = operation
        channels.setdefault(
            f"{sub.topic}.dlq",
            {
                "address": f"{sub.topic}.dlq",
                "description": f"Dead letters of {sub.topic}: the original message, the "
                "error type and text, the attempt count and the times.",
            },
        )
    document: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {"title": broker.title, "version": broker.version},
        "defaultContentType": "application/json",
    }
    if description:
        document["info"]["description"] = description
    servers = _server(broker.url)
    if servers:
        document["servers"] = servers
    document["channels"] = channels
    document["operations"] = operations
    document["components"] = {"messages": messages, "schemas": schemas}
    return document
