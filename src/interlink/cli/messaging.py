"""``interlink dlq ...``, ``interlink topics`` and ``interlink asyncapi``: operate a broker.

The broker is named by URL (``--broker``, or ``INTERLINK_BROKER``), the same URL services use.
Broker clients are imported inside the commands, so ``interlink --help`` needs none of them.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from interlink._url_options import BROKER
from interlink.cli._console import fail, run_or_fail, stdout
from interlink.cli._options import group

if TYPE_CHECKING:
    from interlink.messaging import Broker, DeadLetter

__all__ = ["asyncapi", "dlq_app", "topics"]

T = TypeVar("T")

dlq_app = group("Inspect, replay and purge a topic's dead-letter queue.")

BrokerUrl = Annotated[str, BROKER]
Topic = Annotated[str, typer.Argument(help="The topic (not the .dlq name).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _with_broker(url: str, action: Callable[[Broker], Awaitable[T]]) -> T:
    from interlink.messaging import Broker, MessagingError

    async def run() -> T:
        broker = Broker.from_url(url)
        try:
            return await action(broker)
        finally:
            await broker.stop()

    return run_or_fail(run(), (ValueError, ImportError, OSError, MessagingError))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


async def _dead_letters(broker: Any, topic: str, limit: int) -> tuple[list[DeadLetter], Any]:
    """The dead letters, and the binding their headers are named by."""
    from interlink.messaging.envelope import FIELDS

    letters = await broker.dlq_list(topic, limit)
    return letters, getattr(broker.backend, "binding", FIELDS)


async def _listing(broker: Any, topic: str, limit: int) -> tuple[list[DeadLetter], Any, int]:
    letters, binding = await _dead_letters(broker, topic, limit)
    return letters, binding, await broker.dlq_count(topic)


def _letter(letter: DeadLetter, binding: Any, *, payload: bool) -> dict[str, Any]:
    from interlink.messaging.envelope import read

    env = read(binding, letter.data, letter.headers, fallback_id=letter.id)
    row: dict[str, Any] = {
        "id": letter.id,
        "topic": letter.topic,
        "group": letter.group,
        "attempts": letter.attempts,
        "error_type": letter.error_type,
        "reason": letter.reason,
        "published_at": _when(letter.published_at),
        "dead_at": _when(letter.dead_at),
        "type": env.type or None,
        "key": env.key,
        "correlation_id": env.correlation_id,
        "size": len(letter.data),
    }
    if payload:
        row["headers"] = dict(letter.headers)
        row["decode_error"] = env.error
        try:
            row["payload"] = env.payload.decode()
        except UnicodeDecodeError:
            row["payload_hex"] = env.payload.hex()
    return row


@dlq_app.command("list")
def dlq_list(
    topic: Topic,
    broker: BrokerUrl,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 50,
    as_json: AsJson = False,
) -> None:
    """List the dead letters of TOPIC, oldest first."""
    letters, binding, size = _with_broker(broker, lambda b: _listing(b, topic, limit))
    rows = [_letter(letter, binding, payload=False) for letter in letters]
    if as_json:
        stdout().print_json(json.dumps(rows))
        return
    summary = f"{size} dead letter(s) in {topic}.dlq" + (
        f", the oldest {len(rows)} shown" if len(rows) < size else ""
    )
    columns = ("id", "group", "attempts", "error_type", "reason", "dead_at")
    if not sys.stdout.isatty():
        # Piped: whole values, tab-separated, so an id can be fed to `show` and `replay`.
        sys.stderr.write(summary + "\n")
        lines = ["\t".join(columns)]
        for row in rows:
            lines.append("\t".join(" ".join(str(row[c]).split()) for c in columns))
        sys.stdout.write("\n".join(lines) + "\n")
        return
    if not rows:
        stdout().print(f"no dead letters in {topic}.dlq")
        return
    table = Table(title=summary)
    table.add_column("id", no_wrap=True, overflow="fold")
    for column in columns[1:]:
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(str(row[c]) for c in ("id", "group", "attempts", "error_type")),
            str(row["reason"])[:80],
            row["dead_at"],
        )
    stdout().print(table)


@dlq_app.command("show")
def dlq_show(
    topic: Topic, message_id: Annotated[str, typer.Argument(help="Message id.")], broker: BrokerUrl
) -> None:
    """Show one dead letter of TOPIC in full: the facts, the headers and the payload."""
    letters, binding = _with_broker(broker, lambda b: _dead_letters(b, topic, 100_000))
    found = [letter for letter in letters if letter.id == message_id]
    if not found:
        raise fail(f"no dead letter {message_id!r} in {topic}.dlq")
    stdout().print_json(json.dumps(_letter(found[0], binding, payload=True)))


@dlq_app.command("replay")
def dlq_replay(
    topic: Topic,
    broker: BrokerUrl,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Replay only this message id (repeatable); default: all."),
    ] = None,
) -> None:
    """Re-publish dead letters to TOPIC with their ids (safe to run twice). A message id is
    re-published once, however many dead letters hold it (the same id published twice and
    dead-lettered twice); all of them leave the DLQ."""
    count = _with_broker(broker, lambda b: b.dlq_replay(topic, ids or None))
    stdout().print(f"replayed {count} message(s) to {topic}")


@dlq_app.command("purge")
def dlq_purge(
    topic: Topic,
    broker: BrokerUrl,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter of TOPIC."""
    if not yes:
        typer.confirm(f"Delete every dead letter of {topic}?", abort=True)
    count = _with_broker(broker, lambda b: b.dlq_purge(topic))
    stdout().print(f"purged {count} dead letter(s) from {topic}.dlq")


def topics(broker: BrokerUrl, as_json: AsJson = False) -> None:
    """List the topics a broker knows, dead-letter queues included."""
    names = _with_broker(broker, lambda b: b.topics())
    if as_json:
        stdout().print_json(json.dumps(names))
        return
    for name in names:
        stdout().print(name, markup=False)


def asyncapi(
    target: Annotated[str, typer.Argument(help="MODULE:BROKER, e.g. myapp.events:broker.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Print the AsyncAPI 3 document of a broker's publishers and subscribers."""
    from interlink.messaging import Broker
    from interlink.messaging.asyncapi import asyncapi as document_of

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise fail(f"expected MODULE:BROKER, got {target!r}")
    sys.path.insert(0, "")  # the current directory, as `python -m` would
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise fail(f"cannot import {module_name!r}: {exc}") from exc
    finally:
        sys.path.remove("")
    broker = getattr(module, attribute, None)
    if not isinstance(broker, Broker):
        raise fail(f"{target!r} is not an interlink Broker")
    text = json.dumps(document_of(broker), indent=2)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        output.write_text(text + "\n", encoding="utf-8")
