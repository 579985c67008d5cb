"""Log records that carry the request's correlation id, trace id and span id.

One request leaves lines in six services' logs; with the correlation id and the trace id on each
line, ``grep <id>`` over all of them (or a query in a log store) finds every line of it, and the
trace id leads to its waterfall. ``CorrelationFilter`` adds the three fields to every record a
handler emits; ``JsonFormatter`` writes one JSON object per line for log collectors.

::

    import logging
    from interlink.tracing import CorrelationFilter, JsonFormatter

    handler = logging.StreamHandler()
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter())      # or a format string using %(correlation_id)s
    logging.basicConfig(level=logging.INFO, handlers=[handler])

``configure_logging`` does exactly that in one call.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from interlink.context import CORRELATION
from interlink.tracing.propagation import api

__all__ = ["CorrelationFilter", "JsonFormatter", "configure_logging"]

#: The text format ``configure_logging(json=False)`` uses.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s %(trace_id)s] %(message)s"

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "correlation_id", "trace_id", "span_id"}
)


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``trace_id`` and ``span_id`` to every record ("-" when none).

    A filter, not a formatter, so it works with any formatter and any handler; it never drops
    a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = CORRELATION.get() or "-"
        trace_id = span_id = "-"
        otel = api()
        if otel is not None:
            ctx = otel.trace.get_current_span().get_span_context()
            if ctx.is_valid:
                trace_id = f"{ctx.trace_id:032x}"
                span_id = f"{ctx.span_id:016x}"
        record.trace_id = trace_id
        record.span_id = span_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ids, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("correlation_id", "trace_id", "span_id"):
            value = getattr(record, key, "-")
            if value != "-":
                out[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(
    level: int | str = logging.INFO, *, json: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Send the root logger's records to ``stream`` (stderr) with the ids on every line.

    Returns the handler it installed (replacing handlers a previous call installed).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(TEXT_FORMAT))
    handler.set_name("interlink")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "interlink"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
