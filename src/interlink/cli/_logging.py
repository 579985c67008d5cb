"""Logging for the command line: readable text for people, JSON lines for machines.

Every record carries the request's correlation id, trace id and span id when there is one
(``interlink.tracing.logs``, whose ``JsonFormatter`` writes the JSON lines). Only the
``interlink`` logger is configured, never the root logger: the CLI may run inside a process (a
test, a supervisor) whose own logging is none of its business. Handlers look up ``sys.stderr``
when they write, not when they are built, so a stream swapped later (by a test runner, say) is
honoured and a closed one is never written to.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from interlink.tracing.logs import CorrelationFilter, JsonFormatter, extra_fields

__all__ = ["LOG_FORMATS", "TextFormatter", "configure_logging"]

LOG_FORMATS = ("text", "json")
"""The values ``--log-format`` accepts."""

_LOGGER_NAME = "interlink"
_HANDLER_NAME = "interlink.cli"


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
    handler.addFilter(CorrelationFilter())

    logger = logging.getLogger(_LOGGER_NAME)
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(number)
    logger.propagate = False
    return handler
