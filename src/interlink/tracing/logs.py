"""Log records that carry the request's correlation id, trace id and span id.

One request leaves lines in six services' logs; with the correlation id and the trace id on each
line, ``grep <id>`` over all of them (or a query in a log store) finds every line of it, and the
trace id leads to its waterfall. ``CorrelationFilter`` adds the three fields to every record a
handler emits; ``JsonFormatter`` writes one JSON object per line for log shippers (the format the
``interlink`` command line writes with ``--log-format json``).

::

    import logging
    from interlink.tracing import CorrelationFilter, JsonFormatter

    handler = logging.StreamHandler()
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter())      # or a format string using %(correlation_id)s
    logging.basicConfig(level=logging.INFO, handlers=[handler])
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from interlink.context import CORRELATION
from interlink.tracing.propagation import api

__all__ = ["ID_FIELDS", "CorrelationFilter", "JsonFormatter", "extra_fields"]

#: The fields ``CorrelationFilter`` adds ("-" when there is none).
ID_FIELDS = ("correlation_id", "trace_id", "span_id")

# Attributes every LogRecord carries; anything else on a record came in through ``extra=``.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName", *ID_FIELDS}
)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields passed with ``extra=``, in the order they were given."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and not key.startswith("_")
    }


class CorrelationFilter(logging.Filter):
    """Adds ``correlation_id``, ``trace_id`` and ``span_id`` to every record ("-" when none).

    A filter, not a formatter, so it works with any formatter and any handler; it never drops
    a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp the ids of the request being handled (the current context) on ``record``."""
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
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the request's ids (when
    a ``CorrelationFilter`` found any), then the extra fields.

    Log shippers split on newlines and parse each line alone, so a record never spans lines
    (tracebacks go into the ``exc`` field, escaped). Values JSON cannot encode are written with
    ``str()`` rather than dropping the line.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ID_FIELDS:
            value = getattr(record, key, "-")
            if value != "-":
                entry[key] = value
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
