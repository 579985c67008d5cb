"""The embedded broker: one SQLite file (WAL), shared by the processes of one machine.

``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``, options in the query:

- ``visibility=30``: seconds a lease lasts. A live consumer extends the leases it holds every
  third of that, so only a dead consumer's messages come back (after at most this long).
- ``poll=0.02``: the longest pause between two looks for new messages when idle (other
  processes' publishes are seen by polling; this process's wake its consumers at once).
- ``synchronous=NORMAL``: the durability mode. In WAL mode NORMAL survives a crash of any
  process (a confirmed publish is in the WAL) but may lose the last transactions on power
  loss or an OS crash; ``FULL`` syncs every commit and survives those too, slower.
- ``dlq_max_age=1209600`` (14 days) and ``dlq_max_count=100000``: a dead letter is kept that
  many seconds, and at most that many per topic (the oldest go first).
- ``wal_max_bytes=16777216``: the WAL is cut back to this size after each checkpoint. Acked
  messages are deleted and their pages given back to the file system a batch at a time
  (incremental vacuum, on files this version created), so the file does not only grow.

All SQL runs on one worker thread per backend, which owns the connection and group-commits:
every operation queued while it was busy (publishes, leases, acks, nacks) goes into one
transaction. Acks and nacks do not wait for their commit (a crash can undo the last few,
which means redelivery: at-least-once); publishes and dead-letters do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, ClassVar, TypeVar, TypeVarTuple
from urllib.parse import parse_qs, urlsplit

from interlink._sqlite_thread import sqlite_path
from interlink.messaging.backend import BackendUnavailable, ConsumerLag
from interlink.messaging.backends._base import Received, UrlBackend
from interlink.messaging.backends._options import DLQ_MAX_AGE, DLQ_MAX_COUNT
from interlink.messaging.backends._wait import sleep_or_wake
from interlink.messaging.backends.sqlite._store import WAL_MAX_BYTES, Row, Store, headers_of
from interlink.messaging.envelope import FIELDS, Binding, DeadLetter, OutgoingMessage, read
from interlink.resilience._validate import positive

__all__ = ["SqliteBackend"]

log = logging.getLogger("interlink.messaging.sqlite")

_STOP = object()
_VACUUM_PAGES = 2048  # free pages given back per housekeeping round (8 MiB of 4 KiB pages)


def _count(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"'{name}' must be an integer >= 1: {raw!r}")
    return int(raw)


_MIN_POLL = 0.001
_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

Op = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any] | None"]


Args = TypeVarTuple("Args")
Result = TypeVar("Result")


class _Worker(threading.Thread):
    """Runs the store's operations in batches, one transaction per batch."""

    def __init__(self, backend: SqliteBackend, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name=f"interlink-sqlite {backend.path}", daemon=True)
        self.ops: queue.SimpleQueue[Op | object] = queue.SimpleQueue()
        self.loop = loop
        self.backend = backend
        self.ready: asyncio.Future[None] = loop.create_future()
        self.store: Store | None = None

    def submit(self, fn: Callable[[Store, *Args], Result], *args: *Args) -> asyncio.Future[Result]:
        """``fn(store, *args)`` run on the worker thread; its result, typed as ``fn``'s."""
        future: asyncio.Future[Result] = self.loop.create_future()
        self.ops.put((fn, args, future))
        return future

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.ops.put((fn, args, None))

    def run(self) -> None:
        try:
            store = self.store = Store(
                self.backend.path,
                synchronous=self.backend.synchronous,
                wal_max_bytes=self.backend.wal_max_bytes,
            )
        except Exception as exc:
            self.loop.call_soon_threadsafe(_fail, self.ready, exc)
            return
        ready: list[tuple[Any, Any, BaseException | None]] = [(self.ready, None, None)]
        self.loop.call_soon_threadsafe(_resolve, ready)
        tick = self.backend.visibility / 3
        last_tick = time.monotonic()
        try:
            while True:
                try:
                    first = self.ops.get(timeout=tick)
                except queue.Empty:
                    first = None
                batch: list[Any] = [] if first is None else [first]
                while len(batch) < 2000:
                    try:
                        batch.append(self.ops.get_nowait())
                    except queue.Empty:
                        break
                stop = _STOP in batch
                ops = [op for op in batch if op is not _STOP]
                if time.monotonic() - last_tick >= tick:
                    last_tick = time.monotonic()
                    ops.append((self.backend.housekeeping, (), None))
                if ops:
                    self._run_batch(store, ops)
                if stop:
                    return
        finally:
            store.close()

    def _run_batch(self, store: Store, ops: list[Op]) -> None:
        results: list[tuple[Any, Any, BaseException | None]] = []
        try:
            for fn, args, future in ops:
                results.append((future, fn(store, *args), None))
            store.commit()
        except Exception:
            store.rollback()
            # One failing operation must not fail the others: run each on its own.
            results = []
            for fn, args, future in ops:
                try:
                    value = fn(store, *args)
                    store.commit()
                    results.append((future, value, None))
                except Exception as exc:
                    store.rollback()
                    if future is None:
                        log.warning("sqlite broker operation %s failed: %r", fn.__name__, exc)
                    results.append((future, None, exc))
        waiting = [r for r in results if r[0] is not None]
        if waiting:
            self.loop.call_soon_threadsafe(_resolve, waiting)
        self.backend.committed()


def _resolve(results: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        if future.cancelled():
            continue
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Delivery(Received):
    __slots__ = ("_done", "_sub", "seq")

    def __init__(self, sub: _Subscription, row: Row) -> None:
        self._sub = sub
        self.seq, self.attempt, mid, self.raw, text = row
        self.headers = headers_of(text)
        self.envelope = read(FIELDS, self.raw, self.headers, fallback_id=mid)
        self._done = False

    def _finish(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._sub.held.pop(self.seq, None)
        return True

    async def ack(self) -> None:
        if self._finish():
            self._sub.backend.settle(self._sub.gid, self.seq, self.attempt, None)

    async def nack(self, delay: float) -> None:
        if self._finish():
            until = time.time() + max(delay, 0.0)
            self._sub.backend.settle(self._sub.gid, self.seq, self.attempt, until)

    async def dead_letter(self, reason: str, error_type: str | None) -> None:
        if self._finish():
            env = self.envelope
            published = env.time if env.error is None else None
            await self._sub.backend.worker.submit(
                Store.dead_letter,
                (self._sub.gid, self.seq, self.attempt),
                self._sub.group,
                reason,
                error_type,
                published,
                self._sub.backend.dlq_max_count,
            )


class _Subscription:
    def __init__(self, backend: SqliteBackend, topic: str, group: str, gid: int) -> None:
        self.backend = backend
        self.topic = topic
        self.group = group
        self.gid = gid
        self.held: dict[int, int] = {}  # seq -> attempt, leased and not yet settled
        self.wake = asyncio.Event()


class SqliteBackend(UrlBackend):
    """The SQLite backend (see the module docstring)."""

    scheme: ClassVar[str] = "sqlite"
    binding: ClassVar[Binding] = FIELDS

    @property
    def visibility_timeout(self) -> float:
        """Seconds a dead consumer's deliveries stay leased (``?visibility=``)."""
        return self.visibility

    def __init__(self, url: str) -> None:
        self.path = sqlite_path(url)
        query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
        self.visibility = positive("visibility", float(query.get("visibility", 30.0)))
        self.poll = positive("poll", float(query.get("poll", 0.02)))
        sync = query.get("synchronous", "NORMAL").upper()
        if sync not in _SYNC_MODES:
            raise ValueError(f"'synchronous' must be one of {', '.join(_SYNC_MODES)}: {sync!r}")
        self.synchronous = sync
        self.dlq_max_age = positive("dlq_max_age", float(query.get("dlq_max_age", DLQ_MAX_AGE)))
        self.dlq_max_count = _count("dlq_max_count", query.get("dlq_max_count"), DLQ_MAX_COUNT)
        self.wal_max_bytes = _count("wal_max_bytes", query.get("wal_max_bytes"), WAL_MAX_BYTES)
        self._worker: _Worker | None = None
        self._subs: dict[str, list[_Subscription]] = defaultdict(list)
        self._settles: list[tuple[int, int, int, float | None]] = []
        self._gids: dict[tuple[str, str], int] = {}

    @property
    def worker(self) -> _Worker:
        if self._worker is None:
            raise BackendUnavailable(f"sqlite:///{self.path}", "not connected")
        return self._worker

    async def connect(self) -> None:
        """Start the worker thread (it opens the file and creates the tables)."""
        if self._worker is None:
            worker = _Worker(self, asyncio.get_running_loop())
            worker.start()
            try:
                await worker.ready
            except Exception as exc:
                raise BackendUnavailable(f"sqlite:///{self.path}", repr(exc)) from exc
            self._worker = worker

    async def aclose(self) -> None:
        """Release held leases, commit pending acks, stop the worker."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        for subs in self._subs.values():
            for sub in subs:
                self._release(worker, sub, list(sub.held.items()))
                sub.held.clear()
        self._flush(worker)
        done = worker.submit(lambda store: None)
        worker.ops.put(_STOP)
        with contextlib.suppress(Exception):
            await done
        await asyncio.get_running_loop().run_in_executor(None, worker.join)

    # -- called from the worker thread ---------------------------------------------------

    def housekeeping(self, store: Store) -> None:
        """Extend the leases still held; delete messages every group is done with and dead
        letters past their retention; give free pages back to the file system."""
        rows = [
            (sub.gid, seq, attempt)
            for subs in list(self._subs.values())
            for sub in list(subs)
            for seq, attempt in sub.held.copy().items()
        ]
        store.extend(rows, self.visibility)
        store.collect(list(self._subs))
        store.retain(self.dlq_max_age, self.dlq_max_count)
        store.vacuum(_VACUUM_PAGES)

    def committed(self) -> None:
        """A batch committed (worker thread): nothing to do; hook for subclasses and tests."""

    # -- publishing ---------------------------------------------------------------------

    def _wake(self, topic: str) -> None:
        for sub in self._subs.get(topic, ()):
            sub.wake.set()

    async def publish(self, topic: str, message: OutgoingMessage) -> None:
        """Insert and wait for the commit."""
        await self.publish_batch(topic, [message])

    async def publish_batch(self, topic: str, items: Sequence[OutgoingMessage]) -> None:
        """Insert all in one transaction and wait for its commit."""
        rows = [(item.message_id, item.key, item.data, item.headers) for item in items]
        await self.worker.submit(Store.publish, topic, rows)
        self._wake(topic)

    # -- consuming ----------------------------------------------------------------------

    def settle(self, gid: int, seq: int, attempt: int, visible_at: float | None) -> None:
        """Queue an ack (``visible_at`` None) or nack; flushed on the next loop iteration."""
        if not self._settles:
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self._settles.append((gid, seq, attempt, visible_at))

    def _flush_soon(self) -> None:
        if self._worker is not None:
            self._flush(self._worker)

    def _flush(self, worker: _Worker) -> None:
        settles, self._settles = self._settles, []
        if settles:
            worker.post(Store.settle, settles)
            if any(visible_at is not None for *_, visible_at in settles):
                for subs in self._subs.values():
                    for sub in subs:
                        sub.wake.set()

    def _release(self, worker: _Worker, sub: _Subscription, held: list[tuple[int, int]]) -> None:
        if held:
            worker.post(Store.release, [(sub.gid, seq, attempt) for seq, attempt in held])

    async def ensure_group(self, topic: str, group: str) -> None:
        """Create the group row (see ``Store.ensure_group`` for where it starts)."""
        await self._gid(topic, group)

    async def _gid(self, topic: str, group: str) -> int:
        gid = self._gids.get((topic, group))
        if gid is None:
            gid = self._gids[(topic, group)] = await self.worker.submit(
                Store.ensure_group, topic, group
            )
        return gid

    async def subscribe(self, topic: str, group: str, *, prefetch: int) -> AsyncIterator[_Delivery]:
        """Lease batches of ``prefetch`` rows; poll with a growing pause when idle."""
        sub = _Subscription(self, topic, group, await self._gid(topic, group))
        self._subs[topic].append(sub)
        buffer: deque[_Delivery] = deque()
        pause = _MIN_POLL
        try:
            while True:
                if buffer:
                    yield buffer.popleft()
                    continue
                worker = self.worker
                sub.wake.clear()
                future = worker.submit(Store.lease, sub.gid, topic, prefetch, self.visibility)
                try:
                    rows, next_at = await asyncio.shield(future)
                except asyncio.CancelledError:
                    future.add_done_callback(lambda f: self._release_late(sub, f))
                    raise
                if rows:
                    pause = _MIN_POLL
                    for row in rows:
                        sub.held[row[0]] = row[1]
                        buffer.append(_Delivery(sub, row))
                    continue
                wait = pause
                if next_at is not None:
                    wait = min(wait, max(next_at - time.time(), 0.0))
                pause = min(pause * 2, self.poll)
                await sleep_or_wake(sub.wake, wait)
        finally:
            self._subs[topic].remove(sub)
            if self._worker is not None:
                held = [(d.seq, d.attempt) for d in buffer]
                for seq, _ in held:
                    sub.held.pop(seq, None)
                self._release(self._worker, sub, held)

    def _release_late(self, sub: _Subscription, future: asyncio.Future[Any]) -> None:
        """A lease finished after its subscription was cancelled: give the rows back."""
        if future.cancelled() or future.exception() is not None or self._worker is None:
            return
        rows, _ = future.result()
        self._release(self._worker, sub, [(row[0], row[1]) for row in rows])

    # -- the DLQ and topics -------------------------------------------------------------

    async def dlq_list(self, topic: str, limit: int) -> list[DeadLetter]:
        """Oldest first."""
        return await self.worker.submit(Store.dlq_list, topic, limit)

    async def dlq_replay(self, topic: str, ids: Sequence[str] | None) -> int:
        """Re-publish and remove in one transaction (so a second run finds nothing)."""
        count = await self.worker.submit(Store.dlq_replay, topic, ids)
        self._wake(topic)
        return count

    async def groups(self, topic: str) -> list[str]:
        """The topic's rows in the groups table."""
        return await self.worker.submit(Store.groups, topic)

    async def lag(self, topic: str, group: str) -> ConsumerLag:
        """The group's queued rows and the topic's rows past its cursor, with the oldest's
        publish time."""
        pending, oldest = await self.worker.submit(Store.lag, topic, group)
        age = None if oldest is None else max(0.0, time.time() - oldest)
        return ConsumerLag(topic=topic, group=group, pending=pending, oldest_age=age)

    async def dlq_count(self, topic: str) -> int:
        """A count of the topic's rows in the DLQ table."""
        return await self.worker.submit(Store.dlq_count, topic)

    async def dlq_purge(self, topic: str) -> int:
        """Delete them."""
        return await self.worker.submit(Store.dlq_purge, topic)

    async def topics(self) -> list[str]:
        """Topics with messages, groups or dead letters."""
        return await self.worker.submit(Store.topics)
