"""Dead letters in JetStream (list, replay, purge) and the topic list, read through the
JetStream API: each ``<topic>.dlq`` is a stream of ``encode_dead_letter`` records."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import nats.js.errors

from interlink.messaging.backend import ConsumerLag
from interlink.messaging.backends._base import replays, stored_letter
from interlink.messaging.backends.nats._jetstream import BACKLOG, JetStream
from interlink.messaging.envelope import NATS, DeadLetter

__all__ = ["dlq_list", "dlq_purge", "dlq_replay", "topics"]

log = logging.getLogger("interlink.messaging.nats")


async def _dlq_stream(backend: JetStream, topic: str) -> str | None:
    await backend.connect()
    try:
        name: str = await backend.js.find_stream_name_by_subject(f"{topic}.dlq")
    except nats.js.errors.NotFoundError:
        return None
    return name


async def _letters(
    backend: JetStream, topic: str, limit: int | None
) -> list[tuple[int, DeadLetter]]:
    stream = await _dlq_stream(backend, topic)
    if stream is None:
        return []
    found: list[tuple[int, DeadLetter]] = []
    seq = 1
    subject = f"{topic}.dlq"
    while limit is None or len(found) < limit:
        reply = await backend.api(f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": subject})
        if "error" in reply:
            break  # 404: no message at or after seq
        message = reply["message"]
        seq = int(message["seq"])
        data = base64.b64decode(message.get("data", ""))
        letter = stored_letter(data, log, f"nats: {stream} (seq {seq})")
        if letter is not None:
            found.append((seq, letter))
        seq += 1
    return found


async def dlq_list(backend: JetStream, topic: str, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters."""
    return [letter for _, letter in await _letters(backend, topic, limit)]


async def dlq_replay(backend: JetStream, topic: str, ids: Sequence[str] | None) -> int:
    """Re-publish each chosen letter, then delete it from the DLQ stream (see
    ``NatsBackend.dlq_replay``)."""
    stream = await _dlq_stream(backend, topic)
    if stream is None:
        return 0
    chosen = replays(await _letters(backend, topic, None), ids, NATS)
    for replay in chosen:
        letter, seqs = replay.letter, replay.handles
        msg_id = f"{letter.id}:replay:{seqs[0]}"
        await backend.publish_one(topic, letter.data, replay.headers, msg_id)
        for seq in seqs:
            await backend.js.delete_msg(stream, seq)
    return len(chosen)


async def dlq_purge(backend: JetStream, topic: str) -> int:
    """Purge the DLQ stream."""
    stream = await _dlq_stream(backend, topic)
    if stream is None:
        return 0
    reply = await backend.api(f"STREAM.PURGE.{stream}")
    return int(reply.get("purged", 0))


async def dlq_count(backend: JetStream, topic: str) -> int:
    """The DLQ stream's message count (from its info: no message is read)."""
    stream = await _dlq_stream(backend, topic)
    if stream is None:
        return 0
    reply = await backend.api(f"STREAM.INFO.{stream}")
    return int(reply.get("state", {}).get("messages", 0))


async def groups(backend: JetStream, topic: str) -> list[str]:
    """The durable consumers of ``topic``'s stream but the backlog's."""
    await backend.connect()
    reply = await backend.api(f"CONSUMER.NAMES.{backend.stream_name(topic)}")
    return sorted(n for n in reply.get("consumers") or [] if n != BACKLOG)


async def lag(backend: JetStream, topic: str, group: str) -> ConsumerLag:
    """How far ``group`` is behind on ``topic``, from its consumer's info (no message is read
    but the oldest unacknowledged one's header, for its publish time)."""
    await backend.connect()
    stream = backend.stream_name(topic)
    info = await backend.api(f"CONSUMER.INFO.{stream}.{group}")
    if "error" in info:  # no such stream or group yet: nothing waits for it
        return ConsumerLag(topic=topic, group=group, pending=0)
    pending = int(info.get("num_pending", 0)) + int(info.get("num_ack_pending", 0))
    age = None
    if pending:
        floor = int(info.get("ack_floor", {}).get("stream_seq", 0))
        reply = await backend.api(
            f"STREAM.MSG.GET.{stream}", {"seq": floor + 1, "next_by_subj": topic}
        )
        stamp = reply.get("message", {}).get("time")
        if stamp:
            age = max(0.0, time.time() - _rfc3339(stamp))
    return ConsumerLag(topic=topic, group=group, pending=pending, oldest_age=age)


def _rfc3339(stamp: str) -> float:
    """Seconds since the epoch of a NATS timestamp (nanosecond digits and a ``Z``)."""
    whole, _, rest = stamp.rstrip("Z").partition(".")
    fraction = float(f"0.{rest}") if rest else 0.0
    moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    return moment.timestamp() + fraction


async def topics(backend: JetStream) -> list[str]:
    """Topics of the streams interlink created (by their name prefix), DLQs included."""
    await backend.connect()
    names: list[str] = []
    offset = 0
    while True:
        reply = await backend.api("STREAM.NAMES", {"offset": offset})
        page = reply.get("streams") or []
        names.extend(page)
        offset += len(page)
        if not page or offset >= int(reply.get("total", 0)):
            break
    prefix = backend.stream_prefix
    return sorted(n[len(prefix) :].replace(":", ".") for n in names if n.startswith(prefix))
