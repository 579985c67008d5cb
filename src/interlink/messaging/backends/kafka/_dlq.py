"""Dead letters in ``<topic>.dlq``, a one-partition Kafka topic.

Kafka cannot delete one record, so removing dead letters appends a *marker* record (empty
body) to the same topic: ``interlink-dlq-remove`` names the offsets a replay removed,
``interlink-dlq-purge`` the offset before which everything is gone. Reading the DLQ replays the
topic from its start and applies the markers, then the retention (``dlq_max_age``,
``dlq_max_count``: the newest are kept); letters are listed oldest first by publish time.
The topic itself is created with ``retention.ms`` = ``dlq_max_age``, so the broker drops old
records and markers too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import TopicPartition

from interlink.messaging.backends._base import replays, stored_letter
from interlink.messaging.backends.kafka._connection import KAFKA, KafkaConnection
from interlink.messaging.envelope import DeadLetter

__all__ = ["PURGE", "REMOVE", "dlq_count", "dlq_list", "dlq_purge", "dlq_replay"]

log = logging.getLogger("interlink.messaging.kafka")

#: Marker headers: offsets removed (comma-separated), or everything before an offset.
REMOVE = "interlink-dlq-remove"
PURGE = "interlink-dlq-purge"


async def _read(connection: KafkaConnection, topic: str) -> list[tuple[int, DeadLetter]]:
    """The live dead letters with their offsets, oldest first."""
    name = f"{topic}.dlq"
    await connection.connect()
    if name not in await connection.list_topics():
        return []
    tp = TopicPartition(name, 0)
    consumer = connection.consumer(group=None)
    letters: dict[int, DeadLetter] = {}
    try:
        await consumer.start()
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    break
                headers = dict(record.headers)
                if REMOVE in headers:
                    for text in (headers[REMOVE] or b"").decode().split(","):
                        with contextlib.suppress(ValueError):
                            letters.pop(int(text), None)
                elif PURGE in headers:
                    with contextlib.suppress(ValueError):
                        before = int((headers[PURGE] or b"0").decode())
                        for offset in [o for o in letters if o < before]:
                            del letters[offset]
                else:
                    letter = stored_letter(record.value or b"", log, f"kafka: {name}")
                    if letter is not None:
                        letters[record.offset] = letter
    finally:
        await consumer.stop()
    oldest = time.time() - connection.dlq_max_age
    live = [(o, letter) for o, letter in letters.items() if letter.dead_at >= oldest]
    # Oldest first by when the message was published: keyless messages of one publisher
    # spread over partitions and may die in another order than they were sent.
    live.sort(key=lambda entry: (entry[1].published_at or entry[1].dead_at, entry[0]))
    return live[-connection.dlq_max_count :]


async def _mark(connection: KafkaConnection, topic: str, header: str, value: str) -> None:
    await connection.publish_one(f"{topic}.dlq", b"", None, {header: value})


async def dlq_list(connection: KafkaConnection, topic: str, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` live dead letters."""
    return [letter for _, letter in (await _read(connection, topic))[:limit]]


async def dlq_count(connection: KafkaConnection, topic: str) -> int:
    """How many live dead letters ``topic`` has."""
    return len(await _read(connection, topic))


async def dlq_replay(connection: KafkaConnection, topic: str, ids: Sequence[str] | None) -> int:
    """Per chosen id: publish the message once (record key restored), then append a marker
    removing every letter holding that id. A replay interrupted between the two publishes
    again when run again (at-least-once, like every delivery)."""
    chosen = replays(await _read(connection, topic), ids, KAFKA)
    for replay in chosen:
        headers = replay.headers
        await connection.publish_one(topic, replay.letter.data, headers.get(KAFKA.key), headers)
        await _mark(connection, topic, REMOVE, ",".join(str(o) for o in replay.handles))
    return len(chosen)


async def dlq_purge(connection: KafkaConnection, topic: str) -> int:
    """Append a marker dropping every letter read so far; returns how many were live."""
    live = await _read(connection, topic)
    if not live:
        return 0
    await _mark(connection, topic, PURGE, str(live[-1][0] + 1))
    return len(live)


async def topics(connection: KafkaConnection) -> list[str]:
    """Every topic of the cluster but Kafka's internal ones, DLQs included, sorted."""
    return sorted(await connection.list_topics())
