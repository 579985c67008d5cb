"""A light tracer provider for the embedded trace store: the OpenTelemetry API, not the SDK.

``setup(service, "sqlite:///traces.db")`` returns a ``StoreTracerProvider``. It implements the
OpenTelemetry API's ``TracerProvider``, ``Tracer`` and ``Span`` (so every instrumentation
written against the API, interlink's own included, records through it unchanged) without the
SDK's per-span machinery: no sampler objects, no attribute-limit wrappers, no locks, no span
processors unless one is added. A span is a slotted object; ending it appends its record (a
tuple of plain values: ids, names, times, status, attributes) to a queue.

The queue is drained by one background thread every ``EXPORT_DELAY`` seconds (sooner once
``EXPORT_BATCH`` spans wait), which hands a batch of records to the writer process in one
``marshal.dumps``; the writer turns them into rows and writes them in one SQLite transaction:
the request's path never formats a row or waits on the database, the export thread does no
per-span work in Python, and the rows of one batch share one transaction.

Sampling is decided in ``decide`` (pure): a caller's decision is followed; a new trace is kept
with probability ``sample_ratio`` (by its trace id, as the SDK's ``TraceIdRatioBased`` does,
so every process agrees); new traces for ``exclude_paths`` are dropped; with ``keep_errors``
the spans of unsampled traces are recorded but not exported, and those that end in error are
exported on their own.

After ``os.fork()`` the child starts with an empty queue, its own export thread (started on its
first span) and its own store connection.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import marshal
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from itertools import repeat, starmap
from typing import Any, Final, NamedTuple

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util import types

from interlink.tracing.propagation import api
from interlink.tracing.store import Record, TraceStore

__all__ = [
    "DROP",
    "EXPORT",
    "EXPORT_BATCH",
    "EXPORT_DELAY",
    "MAX_QUEUE",
    "RECORD",
    "RecordedSpan",
    "SpanEvent",
    "StoreTracerProvider",
    "decide",
]

#: Seconds between two exports of the queued spans.
EXPORT_DELAY: Final = 0.5
#: Spans that wake the export thread before its delay is up (and the most one write takes).
EXPORT_BATCH: Final = 2048
#: Spans queued at most; past it new spans are dropped (counted in ``dropped``) rather than
#: letting a stuck disk grow the process without bound.
MAX_QUEUE: Final = 65_536

#: ``decide``'s answers: not recorded at all, recorded but exported only if it fails, exported.
DROP: Final = 0
RECORD: Final = 1
EXPORT: Final = 2

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_EMPTY_STATE = TraceState()
_UNSET = Status(StatusCode.UNSET)
_RATIO_MASK = (1 << 64) - 1
_KINDS = {
    SpanKind.INTERNAL: "internal",
    SpanKind.SERVER: "server",
    SpanKind.CLIENT: "client",
    SpanKind.PRODUCER: "producer",
    SpanKind.CONSUMER: "consumer",
}
#: ``Spans``' kind names (``"server"``...) to the API's kinds
_KIND_OF = {name: kind for kind, name in _KINDS.items()}
_STATUSES = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_log = logging.getLogger("interlink.tracing")
_OTEL = api()
if _OTEL is None:  # pragma: no cover - this module imported the API above
    raise ImportError("opentelemetry-api is not installed")
# how the tracer reads and sets the current context, and whether a SpanContext is a plain
# tuple of its fields (``propagation.context_access``, ``_Api.tuple_context``)
_ACCESS, _TUPLE_CONTEXT = _OTEL.access, _OTEL.tuple_context
_new_tuple, _time_ns, _getrandbits = tuple.__new__, time.time_ns, random.getrandbits
_ERROR = StatusCode.ERROR


def _span_context(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState) -> SpanContext:
    """A local span's context, built as the plain tuple it is when the API's layout allows."""
    if _TUPLE_CONTEXT:
        return _new_tuple(SpanContext, (trace_id, span_id, False, flags, state, True))
    return SpanContext(trace_id, span_id, False, flags, state)


def decide(
    parent: SpanContext | None,
    trace_id: int,
    attributes: types.Attributes,
    *,
    ratio_bound: int,
    keep_errors: bool,
    exclude_paths: frozenset[str],
) -> int:
    """Whether a new span is dropped, recorded (``RECORD``: exported only if it fails) or
    exported, given its parent's context (None for a new trace) and its trace id.

    ``ratio_bound`` is ``sample_ratio * 2**64``: a new trace is sampled when the low 64 bits of
    its id fall below it, the rule of the SDK's ``TraceIdRatioBased``, so that services sharing a
    ratio agree on a trace they both start.
    """
    if parent is not None:
        if parent.trace_flags & TraceFlags.SAMPLED:
            return EXPORT
        return RECORD if keep_errors else DROP
    if exclude_paths and attributes and attributes.get("url.path") in exclude_paths:
        return DROP
    if trace_id & _RATIO_MASK < ratio_bound:
        return EXPORT
    return RECORD if keep_errors else DROP


class SpanEvent(NamedTuple):
    """An event on a span, with the fields of the SDK's ``Event`` that exporters read."""

    name: str
    timestamp: int
    attributes: types.Attributes


class RecordedSpan(trace.Span):
    """A span recorded by ``StoreTracerProvider``.

    Besides the API's ``Span`` methods it has the fields of the SDK's ``ReadableSpan`` that span
    processors read (``name``, ``context``, ``parent``, ``kind``, ``attributes``, ``events``,
    ``links``, ``status``, ``start_time``, ``end_time``, ``resource``), so a processor such as
    ``interlink.metrics.span_metrics()`` works on either.
    """

    __slots__ = (
        "_context",
        "_export",
        "_kind",
        "_parent_id",
        "_provider",
        "_span_id",
        "_state",
        "_trace_id",
        "attributes",
        "end_time",
        "events",
        "links",
        "name",
        "parent",
        "start_time",
        "status",
    )

    def __init__(  # noqa: PLR0917 - built by the tracer only, positionally for speed
        self,
        provider: StoreTracerProvider,
        name: str,
        trace_id: int,
        span_id: int,
        state: TraceState,
        parent: SpanContext | None,
        parent_id: int | None,
        kind: str,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_time: int,
        export: bool,
    ) -> None:
        self._provider = provider
        self._export = export  # sampled: exported, and its trace flags say so
        self.name = name
        # the ids as plain ints: the record, the traceparent and child spans read them without
        # the SpanContext, which is built only when asked for (most spans never are)
        self._trace_id = trace_id
        self._span_id = span_id
        self._state = state
        self._context: SpanContext | None = None
        self.parent = parent
        self._parent_id = parent_id
        self._kind = kind  # the store's name of it ("server"...), what the record carries
        self.attributes = attributes
        self.links = links
        self.events: Sequence[SpanEvent] = ()  # a list from the first event on
        self.status = _UNSET
        self.start_time = start_time
        self.end_time: int | None = None

    @property
    def context(self) -> SpanContext:
        """This span's trace id, span id, flags and state."""
        ctx = self._context
        if ctx is None:
            flags = _SAMPLED if self._export else _NOT_SAMPLED
            ctx = self._context = _span_context(self._trace_id, self._span_id, flags, self._state)
        return ctx

    @property
    def kind(self) -> SpanKind:
        """The span's kind (``SpanKind.SERVER``...)."""
        return _KIND_OF[self._kind]

    @property
    def resource(self) -> Any:
        """The provider's resource (``service.name`` and the other attributes given)."""
        return self._provider.resource

    def get_span_context(self) -> SpanContext:
        """This span's trace id, span id and flags."""
        return self.context

    def is_recording(self) -> bool:
        """True until the span ends."""
        return self.end_time is None

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        """Set one attribute (ignored once ended, and for a None value)."""
        if self.end_time is None and value is not None:
            self.attributes[key] = tuple(value) if isinstance(value, list) else value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        """Add an event, stamped now unless ``timestamp`` (ns since the epoch) is given."""
        if self.end_time is None:
            events = self.events
            if not isinstance(events, list):
                fresh: list[SpanEvent] = []
                events = self.events = fresh
            events.append(
                SpanEvent(name, time.time_ns() if timestamp is None else timestamp, attributes)
            )

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Link this span to ``context`` (a span it follows from, not under)."""
        if self.end_time is None and context.is_valid:
            self.links = [*self.links, Link(context, attributes)]

    def update_name(self, name: str) -> None:
        """Rename the span (a server span learns its route late)."""
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status; UNSET is ignored and OK is final, as in the SDK."""
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if not isinstance(status, Status):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Add an ``exception`` event (type, message, stack trace), as the SDK does."""
        cls = type(exception)
        module = cls.__module__
        recorded: dict[str, types.AnyValue] = {
            "exception.type": cls.__qualname__
            if module in ("builtins", "")
            else f"{module}.{cls.__qualname__}",
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span and queue its record for export (at most once)."""
        if self.end_time is not None:
            return
        ended = self.end_time = _time_ns() if end_time is None else end_time
        provider = self._provider
        if provider.processors:
            for processor in provider.processors:
                processor.on_end(self)
        status = self.status
        if status is _UNSET:
            if not self._export:
                return
            code, description = "unset", None
        elif self._export or status.status_code is _ERROR:
            code, description = _STATUSES[status.status_code], status.description
        else:
            return
        # the record the writer stores, built here as plain values so that the export thread
        # hands a batch over in one marshal.dumps, with no per-span work of its own
        start, events, links = self.start_time, self.events, self.links
        provider.enqueue(
            (
                self._trace_id,
                self._span_id,
                self._parent_id,
                self.name,
                self._kind,
                start,
                ended or start,
                code,
                description,
                self.attributes,
                tuple([(e.name, e.timestamp, dict(e.attributes or {})) for e in events])
                if events
                else (),
                tuple([(k.context.trace_id, k.context.span_id) for k in links]) if links else (),
            )
        )

    def write_w3c(self, carrier: MutableMapping[str, str]) -> None:
        """Write this span's W3C ``traceparent`` (and ``tracestate``) into ``carrier``, what the
        default propagator writes for it with no baggage (``inject_span``'s shortcut)."""
        carrier["traceparent"] = "00-%032x-%016x-%s" % (  # noqa: UP031 - the cheapest
            self._trace_id,
            self._span_id,
            "01" if self._export else "00",
        )
        state = self._state
        if state is not _EMPTY_STATE and state:
            carrier["tracestate"] = state.to_header()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        """End the span; an exception leaving the block marks it failed first."""
        if exc_val is not None and self.end_time is None:
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def __repr__(self) -> str:
        return f"RecordedSpan({self.name!r}, trace_id={self._trace_id:032x})"


class _Tracer(trace.Tracer):
    """The provider's tracer: the API's ``start_span``, and the two calls ``Spans`` makes for
    interlink's own spans (``open_current``, ``start_child``), which take an attribute dict
    the caller gives up and skip the API's argument handling."""

    __slots__ = ("_get", "_key", "_provider", "attach", "detach")

    #: ``Spans`` calls ``open_current`` and ``start_child`` on a tracer saying so
    fast_spans: Final = True

    def __init__(
        self, provider: StoreTracerProvider, access: tuple[Any, Any, Any, str | None] | None = None
    ) -> None:
        self._provider = provider
        self._get, self.attach, self.detach, self._key = access or _ACCESS

    def start_span(  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        key = self._key
        parent = (
            trace.get_current_span(context)
            if key is None
            else (self._get() if context is None else context).get(key)
        )
        return self._begin(
            name,
            _KINDS.get(kind, "internal"),
            parent,
            dict(attributes) if attributes else {},
            tuple(links) if links else (),
            start_time,
            context,
        )

    def open_current(
        self, name: str, kind: str, context: Any, attributes: dict[str, Any]
    ) -> tuple[trace.Span, object]:
        """Start a span of ``kind`` (``"server"``, ``"consumer"``...) under ``context`` (None:
        the current one) with ``attributes`` (kept, not copied), and make it current: the span
        and the token that ``detach`` takes."""
        if kind not in _KIND_OF:
            raise KeyError(kind)
        key = self._key
        if key is None:
            span = self._begin(
                name, kind, trace.get_current_span(context), attributes, (), None, context
            )
            return span, self.attach(trace.set_span_in_context(span, context))
        base = self._get() if context is None else context
        span = self._begin(name, kind, base.get(key), attributes, (), None, context)
        return span, self.attach(context_api.Context({**base, key: span}))

    def start_child(self, name: str, kind: str, attributes: dict[str, Any]) -> trace.Span:
        """Start a span of ``kind`` under the current context with ``attributes`` (kept, not
        copied), not made current (a CLIENT or PRODUCER span)."""
        if kind not in _KIND_OF:
            raise KeyError(kind)
        key = self._key
        parent = trace.get_current_span() if key is None else self._get().get(key)
        return self._begin(name, kind, parent, attributes, (), None, None)

    def _begin(  # noqa: PLR0917 - private, positional for speed
        self,
        name: str,
        kind: str,
        parent: object,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_time: int | None,
        context: context_api.Context | None,
    ) -> trace.Span:
        p = self._provider
        kind_of = type(parent)
        if kind_of is RecordedSpan:
            ctx: SpanContext | None = parent.context  # type: ignore[attr-defined]
        elif parent is None:
            ctx = None
        elif kind_of is NonRecordingSpan or isinstance(parent, trace.Span):
            ctx = parent.get_span_context()  # type: ignore[attr-defined]
        else:
            ctx = None
        parent_id: int | None
        if ctx is not None:
            if _TUPLE_CONTEXT:  # the fields at once, in C, instead of four properties
                trace_id, parent_id, _, _, state, valid = ctx
            else:
                trace_id, parent_id = ctx.trace_id, ctx.span_id
                state, valid = ctx.trace_state, ctx.is_valid
            if not valid:
                ctx = None
        if ctx is not None:
            span_id = _getrandbits(64) or 1
        else:
            parent_id = None
            bits = _getrandbits(192)  # a new trace: both ids from one call
            trace_id = bits >> 64 or 1
            span_id = bits & _RATIO_MASK or 1
            state = _EMPTY_STATE
        verdict = decide(
            ctx,
            trace_id,
            attributes,
            ratio_bound=p.ratio_bound,
            keep_errors=p.keep_errors,
            exclude_paths=p.exclude_paths,
        )
        if verdict == DROP or p.closed:
            return NonRecordingSpan(_span_context(trace_id, span_id, _NOT_SAMPLED, state))
        span = RecordedSpan(
            p,
            name,
            trace_id,
            span_id,
            state,
            ctx,
            parent_id,
            kind,
            attributes,
            links,
            _time_ns() if start_time is None else start_time,
            verdict == EXPORT,
        )
        if p.processors:
            for processor in p.processors:
                processor.on_start(span, parent_context=context)
        return span

    # the API types it with a private "agnostic" context manager class
    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class StoreTracerProvider(trace.TracerProvider):
    """An OpenTelemetry API ``TracerProvider`` that records spans into a ``TraceStore``.

    What ``setup`` returns for a ``sqlite:///`` exporter. Besides ``get_tracer`` it has the SDK
    provider's ``add_span_processor``, ``force_flush`` and ``shutdown``; ``dropped`` counts
    spans lost to a full queue, ``failed`` the spans whose write failed.
    """

    _writer: _Writer | None
    _use_writer: bool

    def __init__(
        self,
        store: TraceStore,
        *,
        resource: Any,
        sample_ratio: float = 1.0,
        keep_errors: bool = True,
        exclude_paths: frozenset[str] = frozenset(),
        retention_age: float | None = None,
        retention_traces: int | None = None,
        prune_every: int = 200,
        shutdown_on_exit: bool = True,
    ) -> None:
        self.store = store
        self.resource = resource
        self.service = str(resource.attributes.get("service.name", "unknown"))
        self.ratio_bound = round(sample_ratio * (1 << 64))
        self.keep_errors = keep_errors
        self.exclude_paths = exclude_paths
        self.processors: tuple[Any, ...] = ()
        self.closed = False
        self.dropped = 0
        self.failed = 0
        self._retention_age = retention_age
        self._retention_traces = retention_traces
        self._prune_every = prune_every
        self._exports = 0
        self._tracer = _Tracer(self)
        self._fresh()
        if self._use_writer:  # now, so that its start-up is over before the first requests
            self._writer = _Writer.start(self)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)
        if shutdown_on_exit:
            atexit.register(self.shutdown)

    def _fresh(self) -> None:
        self._queue: deque[Record] = deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer = None
        # a file store is written by a child process; an in-memory one (tests) by the thread
        self._use_writer = self.store.path != ":memory:"

    def _after_fork(self) -> None:
        # the parent exports what was queued before the fork; the child starts empty, with a
        # writer of its own (the parent's pipes are closed here, so that the parent's writer
        # still sees the end of its input when the parent closes it)
        if self._writer is not None:
            self._writer.disown()
        self._fresh()
        if not self.closed:
            self.store.reopen()

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes | None = None,
    ) -> trace.Tracer:
        """The provider's tracer (one for every instrumentation: they share the store)."""
        return self._tracer

    def add_span_processor(self, processor: Any) -> None:
        """Call ``processor.on_start(span, parent_context=...)`` and ``processor.on_end(span)``
        for every recorded span, on the thread that starts or ends it (an SDK
        ``SpanProcessor``, such as ``interlink.metrics.span_metrics()``)."""
        self.processors = (*self.processors, processor)

    def enqueue(self, record: Record) -> None:
        """Queue an ended span's record for the export thread."""
        queue = self._queue
        if len(queue) >= MAX_QUEUE:
            self.dropped += 1
            return
        queue.append(record)
        if self._thread is None or len(queue) == EXPORT_BATCH:
            self.wake()

    def wake(self) -> None:
        """Start the export thread, or have it export now (a batch is full)."""
        if self._thread is None:
            self._start()
        else:
            self._wake.set()

    def _start(self) -> None:
        with self._write_lock:
            if self._thread is not None or self.closed:
                return
            thread = threading.Thread(target=self._run, name="interlink-traces", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self) -> None:
        wake = self._wake
        while not self.closed:
            wake.wait(EXPORT_DELAY)
            wake.clear()
            self._drain()

    def _drain(self) -> bool:
        """Write every queued span, a batch per transaction; False when a write failed."""
        ok = True
        with self._write_lock:
            queue = self._queue
            while queue:
                # popped in C: the records are plain tuples already, nothing to convert
                batch = list(starmap(queue.popleft, repeat((), min(len(queue), EXPORT_BATCH))))
                ok = self._write(batch) and ok
        return ok

    def _write(self, records: list[Record]) -> bool:
        if self._use_writer:
            writer = self._writer
            if writer is None:
                writer = self._writer = _Writer.start(self)
            answer = None if writer is None else writer.send(records)
            if answer is not None:
                if not answer:
                    self.failed += len(records)
                return answer
            # the writer could not start or died: this process writes from now on
            _log.warning("trace writer process unavailable; writing from the export thread")
            self._use_writer = False
            self._writer = None
        ok = _write_records(
            self.store,
            records,
            self.service,
            exports=self._exports,
            every=self._prune_every,
            max_age=self._retention_age,
            max_traces=self._retention_traces,
        )
        self._exports += 1
        if not ok:
            self.failed += len(records)
        return ok

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write every span ended so far now; True when all were written."""
        return self._drain()

    def shutdown(self) -> None:
        """Write what is queued, stop the export thread; later spans are not recorded."""
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._drain()
        if self._writer is not None:
            self._writer.close()
        for processor in self.processors:
            processor.shutdown()


def _write_records(
    store: TraceStore,
    records: Sequence[Record],
    service: str,
    *,
    exports: int,
    every: int,
    max_age: float | None,
    max_traces: int | None,
) -> bool:
    """Store ``records`` in one transaction, and apply retention every ``every`` writes;
    False when the write failed (logged: a locked or full disk must not stop the writer)."""
    try:
        store.add_records(records, service)
    except Exception:
        _log.exception("trace store write failed")
        return False
    if (exports + 1) % every == 0 and (max_age is not None or max_traces is not None):
        try:
            store.prune(max_age=max_age, max_traces=max_traces)
        except Exception:
            _log.exception("trace store pruning failed")
    return True


class _Writer:
    """The child process that writes a provider's batches into its store.

    A batch crosses a pipe as ``marshal`` bytes behind a 4-byte length; the child answers one
    byte per batch (1 stored, 0 failed) once it committed, so ``force_flush`` means written.
    Formatting rows and SQLite's work happen in the child: the service's process only packs
    plain values. The child has its own session (a Ctrl-C to the service's terminal does not
    kill it before the last flush) and ends when its input closes, the service's exit included.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, provider: StoreTracerProvider) -> _Writer | None:
        """Start the child for ``provider``'s store; None when it cannot start."""
        store = provider.store
        settings = {
            "path": store.path,
            "busy_timeout": store.busy_timeout,
            "service": provider.service,
            "every": provider._prune_every,
            "max_age": provider._retention_age,
            "max_traces": provider._retention_traces,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "interlink.tracing.recorder", json.dumps(settings)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError:
            _log.exception("trace writer process failed to start")
            return None
        return cls(proc)

    def send(self, records: list[Record]) -> bool | None:
        """Hand ``records`` over and wait until stored: True, False (the write failed), or
        None (the child is gone)."""
        try:
            payload = marshal.dumps(records)
        except ValueError:  # an attribute value of a type marshal does not know
            payload = marshal.dumps([_plain(r) for r in records])
        stdin, stdout = self.proc.stdin, self.proc.stdout
        if stdin is None or stdout is None:  # never: both are pipes
            return None
        try:
            stdin.write(len(payload).to_bytes(4, "big") + payload)
            stdin.flush()
            answer = stdout.read(1)
        except OSError:
            return None
        return None if not answer else answer == b"\x01"

    def close(self, timeout: float = 10.0) -> None:
        """Close its input (it writes what it has, then exits) and wait for it."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def disown(self) -> None:
        """In a forked child: close the inherited pipes without touching the parent's writer
        (the file objects stay referenced, so that they never close the numbers again)."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    os.close(pipe.fileno())
        _DISOWNED.append(self)


_DISOWNED: list[_Writer] = []


def _plain(record: Record) -> Record:
    """``record`` with every attribute value ``marshal`` cannot carry turned into a string."""
    events = tuple((n, at, _plain_values(a)) for n, at, a in record[10])
    return (*record[:9], _plain_values(record[9]), events, record[11])


def _plain_values(attributes: dict[str, Any]) -> dict[str, Any]:
    kept = (str, int, float, bool, tuple)
    return {k: v if isinstance(v, kept) else str(v) for k, v in attributes.items()}


def _serve(settings: dict[str, Any]) -> None:
    """The writer process: batches from stdin into the store until stdin closes."""
    store = TraceStore(settings["path"], busy_timeout=settings["busy_timeout"])
    source, answers = sys.stdin.buffer, sys.stdout.buffer
    exports = 0
    while True:
        head = source.read(4)
        if len(head) < 4:
            return
        size = int.from_bytes(head, "big")
        batch = source.read(size)
        if len(batch) < size:  # the service died while sending it: nothing whole to store
            return
        records = marshal.loads(batch)
        ok = _write_records(
            store,
            records,
            settings["service"],
            exports=exports,
            every=settings["every"],
            max_age=settings["max_age"],
            max_traces=settings["max_traces"],
        )
        exports += 1
        try:
            answers.write(b"\x01" if ok else b"\x00")
            answers.flush()
        except BrokenPipeError:  # the service is gone (killed): what it sent is stored
            os._exit(0)  # no flush of the dead pipe at exit


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(json.loads(sys.argv[1]))
