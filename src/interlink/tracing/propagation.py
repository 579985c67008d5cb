"""Inject and extract W3C trace context and baggage, with no SDK required.

The OpenTelemetry API alone propagates: an incoming ``traceparent`` extracted by a server and
injected into its outgoing calls passes the trace through a service that records nothing, so a
trace stays whole across services that do not all run an SDK. The checks that make the common
case free: the API is imported once (``functools.cache``), and an empty current context (no span,
no baggage: the API's state whenever nothing was extracted or started) is skipped before the
propagator is asked.

With the API's default propagators (W3C trace context and baggage, ``OTEL_PROPAGATORS`` unset),
the two commonest cases skip the propagator chain: ``extract`` of a lone ``traceparent`` (no
``tracestate``, no ``baggage``) parses it here by the same rules, and ``inject_span`` of a span
with no baggage in the current context formats it here. Any other propagator, or any header or
baggage beyond that, goes through the API's propagators as before.

A malformed incoming ``traceparent``/``tracestate``/``baggage`` is the caller's garbage, and the
API's propagators log it at WARNING, the whole header in each line (a 10 KB baggage is a 10 KB
line), on every request. Once the API is loaded, their loggers pass each message at most once
per ``WARNING_INTERVAL`` seconds, with the header cut to ``WARNING_WIDTH`` characters and a count
of the lines dropped since (``BoundedWarnings``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TRACEPARENT",
    "TRACE_HEADERS",
    "BoundedWarnings",
    "api",
    "extract",
    "inject",
    "inject_span",
    "use_context",
]

#: The headers (lower case) the default OpenTelemetry propagators read and write.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
#: The loggers of the API's propagators, which log malformed incoming headers.
PROPAGATOR_LOGGERS = (
    "opentelemetry.baggage.propagation",
    "opentelemetry.trace.propagation.tracecontext",
)
#: Seconds between two lines of the same propagator warning.
WARNING_INTERVAL = 10.0
#: Characters of an incoming header shown in a propagator warning.
WARNING_WIDTH = 64

#: A valid W3C ``traceparent``, by the rules the API's ``TraceContextTextMapPropagator``
#: follows: version ``ff`` and zero ids are refused, extra fields too on version 00 (a later
#: version may add some). Its groups ``trace_id``, ``span_id`` and ``flags`` (the 2nd to 4th;
#: the 1st only marks version 00) are lower-case hex. ``extract`` and the gateway read with it.
TRACEPARENT = re.compile(
    r"^[ \t]*(?:(00)|(?!00|ff)[0-9a-f]{2})"
    r"-(?!0{32})(?P<trace_id>[0-9a-f]{32})-(?!0{16})(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?(1)[ \t]*|(?:-.*|[ \t]*))$"
)
_TRACEPARENT_MAX = 512  # longer is left to the API's propagator (it warns)
_new_tuple = tuple.__new__


class BoundedWarnings(logging.Filter):
    """A logging filter that lets each message (by its format string) through at most once per
    ``interval`` seconds, its string arguments cut to ``width`` characters, and says how many
    lines like it were dropped in between."""

    def __init__(
        self,
        interval: float = WARNING_INTERVAL,
        width: int = WARNING_WIDTH,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.width = width
        self._clock = clock
        self._last: dict[object, float] = {}
        self._dropped: dict[object, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass, shortened, or drop ``record``."""
        key = record.msg
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        if len(self._last) > 1000:  # a few templates in practice; never grows without bound
            self._last.clear()
        self._last[key] = now
        if isinstance(record.args, tuple):
            record.args = tuple(self._cut(arg) for arg in record.args)
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like it in the last {self.interval:g} s)"
        return True

    def _cut(self, arg: object) -> object:
        if isinstance(arg, str | bytes) and len(arg) > self.width:
            return f"{arg[: self.width]!r}... ({len(arg)} characters)"
        return arg


@dataclass(frozen=True, slots=True)
class _Api:
    get_current: Any
    attach: Any
    detach: Any
    inject: Any
    extract: Any
    trace: Any
    textmap: Any
    baggage: Any
    context_type: Any
    #: the API keeps the configured provider in ``trace._TRACER_PROVIDER`` (None until an SDK is
    #: set); reading it skips ``get_tracer_provider()``'s environment look-up on every call
    direct: bool
    composite: Any
    #: ``(get, attach, detach, key)``: how a tracer reads and sets the current context, and the
    #: key of the current span in it (``context_access``)
    access: tuple[Any, Any, Any, str | None]
    #: a ``SpanContext`` is the plain tuple ``(trace id, span id, remote, flags, state,
    #: valid)``, so it can be read by unpacking and built by ``tuple.__new__`` (checked at load)
    tuple_context: bool
    #: the commonest ``traceparent`` flags as the API's ``TraceFlags``, and an empty state
    flags: dict[str, Any]
    empty_state: Any


@functools.cache
def api() -> _Api | None:
    """The OpenTelemetry API entry points, or None when ``opentelemetry-api`` is missing."""
    try:
        from opentelemetry import baggage, context, propagate, trace
        from opentelemetry.propagators.composite import CompositePropagator
    except ImportError:
        return None
    direct = hasattr(trace, "_TRACER_PROVIDER") and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    for name in PROPAGATOR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, BoundedWarnings) for f in logger.filters):
            logger.addFilter(BoundedWarnings())
    return _Api(
        get_current=context.get_current,
        attach=context.attach,
        detach=context.detach,
        inject=propagate.inject,
        extract=propagate.extract,
        trace=trace,
        textmap=propagate.get_global_textmap,
        baggage=baggage.get_all,
        context_type=context.Context,
        direct=direct,
        composite=CompositePropagator,
        access=context_access(context, trace),
        tuple_context=_tuple_context(trace),
        flags={"00": trace.TraceFlags(0), "01": trace.TraceFlags(1)},
        empty_state=trace.TraceState(),
    )


def context_access(context: Any, trace: Any) -> tuple[Any, Any, Any, str | None]:
    """How a tracer reads and sets the OpenTelemetry context: ``(get, attach, detach, key)``.

    The API keeps the current context in a ``ContextVar`` and the current span under a key of
    it, neither of them public. Both are found here by watching the public API (``attach`` a
    context, see which variable holds it; ``set_span_in_context``, see which key holds the span)
    and checked to behave as the API does; then a span is made current by the variable's own
    ``set``/``reset`` (C calls) instead of two layers of Python functions each. When either is
    not found (another runtime context configured), the API's functions are used (and None
    for the key: ask ``trace.get_current_span``).
    """
    portable = (context.get_current, context.attach, context.detach, None)
    probe = trace.NonRecordingSpan(trace.SpanContext(1, 1, False))
    keys = list(trace.set_span_in_context(probe, context.Context()))
    if len(keys) != 1 or trace.get_current_span(context.Context({keys[0]: probe})) is not probe:
        return portable
    key: str = keys[0]

    def find() -> contextvars.ContextVar[Any] | None:
        held = context.Context()
        context.attach(held)  # in a copy of the caller's context: nothing to undo
        for var, value in contextvars.copy_context().items():
            if value is held and isinstance(var, contextvars.ContextVar):
                other = context.Context({key: probe})
                token = var.set(other)
                seen = context.get_current() is other and trace.get_current_span() is probe
                var.reset(token)
                if seen and context.get_current() is held:
                    return var
        return None

    var = contextvars.copy_context().run(find)
    if var is None:
        return (*portable[:3], key)
    return var.get, var.set, var.reset, key


def _tuple_context(trace: Any) -> bool:
    """Whether the API's ``SpanContext`` is the plain tuple of its six fields, in order (not
    promised by the API: any other shape, including one that is no tuple, answers False)."""
    flags, state = trace.TraceFlags(1), trace.TraceState()
    probe = trace.SpanContext(3, 4, True, flags, state)
    fields = (3, 4, True, flags, state, True)
    if not issubclass(trace.SpanContext, tuple) or tuple(probe) != fields:
        return False
    return fields == (
        probe.trace_id,
        probe.span_id,
        probe.is_remote,
        probe.trace_flags,
        probe.trace_state,
        probe.is_valid,
    )


_W3C_FIELDS = frozenset(TRACE_HEADERS)
# (the global propagator last seen, whether it is the default W3C pair), replaced as one tuple
_seen_textmap: tuple[object, bool] = (None, False)


def _w3c(otel: _Api) -> bool:
    """True when the global propagator is the API's default: trace context plus baggage (a
    composite writing exactly ``TRACE_HEADERS``), so that the shortcuts below read and write
    the headers it would."""
    global _seen_textmap
    textmap = otel.textmap()
    seen = _seen_textmap
    if seen[0] is textmap:
        return seen[1]
    default = isinstance(textmap, otel.composite) and set(textmap.fields) == _W3C_FIELDS
    _seen_textmap = (textmap, default)
    return default


def inject(carrier: MutableMapping[str, str], context: object | None = None) -> None:
    """Write the trace context of ``context`` (default: the current one) into ``carrier``.

    Writes nothing when the context holds no span and no baggage, or without the API.
    """
    otel = api()
    if otel is None:
        return
    ctx = otel.get_current() if context is None else context
    if ctx:  # an OpenTelemetry Context is a dict: empty means nothing to propagate
        otel.inject(carrier, context=ctx)


def inject_span(carrier: MutableMapping[str, str], span: Any) -> None:
    """``inject`` of the current context with ``span`` as its active span (a PRODUCER or
    CLIENT span that is not made current)."""
    otel = api()
    if otel is None:
        return
    if _w3c(otel):
        current = otel.access[0]()  # the current context, read as the tracer reads it
        if not current or not otel.baggage(current):
            write = getattr(span, "write_w3c", None)  # a RecordedSpan writes its own
            if write is not None:
                write(carrier)
                return
            ctx = span.get_span_context()
            if ctx != otel.trace.INVALID_SPAN_CONTEXT:
                carrier["traceparent"] = (
                    f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
                )
                if ctx.trace_state:
                    carrier["tracestate"] = ctx.trace_state.to_header()
            return
    otel.inject(carrier, context=otel.trace.set_span_in_context(span))


def extract(carrier: Mapping[str, str]) -> object | None:
    """The context carried by ``carrier`` (lower-case keys), or None when it carries none.

    Returns an OpenTelemetry ``Context`` holding the remote span and baggage; pass it to
    ``use_context`` or as the parent of a span.
    """
    if _W3C_FIELDS.isdisjoint(carrier):  # none of TRACE_HEADERS, asked in C
        return None
    otel = api()
    if otel is None:
        return None
    if "tracestate" not in carrier and "baggage" not in carrier and _w3c(otel):
        parent = carrier["traceparent"]
        if isinstance(parent, str) and len(parent) <= _TRACEPARENT_MAX:
            return _parent(otel, parent)
    ctx: object = otel.extract(carrier)
    return ctx or None


def _parent(otel: _Api, traceparent: str) -> object | None:
    """The context of a lone ``traceparent``, read by the W3C rules the API's propagator
    follows (``TRACEPARENT``)."""
    match = TRACEPARENT.match(traceparent)
    if match is None:
        return None
    _, trace_id, span_id, flags = match.groups()
    trace = otel.trace
    remote_id, span = int(trace_id, 16), int(span_id, 16)
    flag = otel.flags.get(flags)
    if flag is None:
        flag = trace.TraceFlags(int(flags, 16))
    remote = (
        _new_tuple(trace.SpanContext, (remote_id, span, True, flag, otel.empty_state, True))
        if otel.tuple_context
        else trace.SpanContext(remote_id, span, True, flag)
    )
    key = otel.access[3]
    context: object = (
        trace.set_span_in_context(trace.NonRecordingSpan(remote), otel.context_type())
        if key is None
        else otel.context_type({key: trace.NonRecordingSpan(remote)})
    )
    return context


@contextmanager
def use_context(context: object | None) -> Iterator[None]:
    """Make ``context`` (from ``extract``) current for the block; None changes nothing."""
    otel = api()
    if context is None or otel is None:
        yield
        return
    token = otel.attach(context)
    try:
        yield
    finally:
        otel.detach(token)
