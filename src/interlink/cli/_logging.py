"""Logging for the command line: readable text for people, JSON lines for machines.

Only the ``interlink`` logger is configured, never the root logger: the CLI may run inside a
process (a test, a supervisor) whose own logging is none of its business. Handlers look up
``sys.stderr`` when they write, not when they are built, so a stream swapped later (by a test
runner, say) is honoured and a closed one is never written to.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "extra_fields"]

LOG_FORMATS = ("text", "json")
"""The values ``--log-format`` accepts."""

_LOGGER_NAME = "interlink"
_HANDLER_NAME = "interlink.cli"

# Attributes every LogRecord carries; anything else on a record came in through ``extra=``.
_RECORD_FIELDS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields passed with ``extra=``, in the order they were given."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then the extra fields.

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
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The message followed by the extra fields as ``key=value``, so text logs lose nothing."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The message plus ``key=value`` for each extra field."""
        text = super().formatMessage(record)
        extras = extra_fields(record)
        if not extras:
            return text
        return text + " " + " ".join(f"{key}={value!r}" for key, value in extras.items())


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the moment of the write."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        names = ", ".join(
            repr(name.lower()) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        )
        raise ValueError(f"'log_level' must be one of {names}: {level!r}")
    return number


def _text_handler() -> logging.Handler:
    handler = RichHandler(console=Console(stderr=True), show_path=False)
    handler.setFormatter(TextFormatter("%(message)s"))
    return handler


def configure_logging(*, level: str | int = "warning", fmt: str = "text") -> logging.Handler:
    """Send the ``interlink`` logger's records at ``level`` and above to stderr in ``fmt``.

    Calling it again replaces the handler installed by the previous call instead of adding a
    second one, so every record is written once. The logger stops propagating to the root
    logger, which would otherwise print each record a second time in its own format.
    Returns the installed handler.
    """
    number = _level_number(level)
    if fmt == "json":
        handler: logging.Handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler = _text_handler()
    else:
        formats = ", ".join(repr(name) for name in LOG_FORMATS)
        raise ValueError(f"'log_format' must be one of {formats}: {fmt!r}")
    handler.set_name(_HANDLER_NAME)

    logger = logging.getLogger(_LOGGER_NAME)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(number)
    logger.propagate = False
    return handler
