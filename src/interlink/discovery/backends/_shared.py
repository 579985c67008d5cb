"""What the backends share: reading stored records one by one, and checking URL parts.

A stored record is anyone's to write, so one that cannot be read (not JSON, not an object,
missing fields, a bad port, an instance of another service than its key says) is skipped with a
warning naming its key, at most once a minute per key: it never hides the good records beside
it. A malformed URL part fails at ``from_url`` with ``InvalidURLError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

from interlink.discovery.instance import ServiceInstance
from interlink.errors import InvalidURLError

__all__ = ["check_hosts", "instance_of", "query_of", "query_seconds", "skip_record", "split_url"]

log = logging.getLogger("interlink.discovery")

_WARN_EVERY = 60.0
_warned: dict[str, float] = {}  # key -> when its last warning went out (monotonic)


def skip_record(service: str, key: str, reason: str) -> None:
    """Log that the record at ``key`` is skipped: a warning at most once a minute per key."""
    now = time.monotonic()
    last = _warned.get(key)
    due = last is None or now - last >= _WARN_EVERY
    if due:
        if len(_warned) >= 4096:  # a flood of distinct bad keys must not grow this forever
            _warned.clear()
        _warned[key] = now
    log.log(
        logging.WARNING if due else logging.DEBUG,
        "discovery: skipping the unreadable registry record %s of %r (%s); the other "
        "instances are served",
        key,
        service,
        reason[:200],
        extra={"service": service, "key": key},
    )


def instance_of(service: str, key: str, stored: object) -> ServiceInstance | None:
    """The instance stored at ``key`` (JSON text or bytes, or its parsed value), or None when
    the record is unreadable or belongs to another service (skipped with ``skip_record``)."""
    try:
        data = json.loads(stored) if isinstance(stored, str | bytes | bytearray) else stored
        if not isinstance(data, Mapping):
            raise ValueError(f"a JSON object was expected, not {type(data).__name__}")
        instance = ServiceInstance.from_dict(data)
    except Exception as exc:
        skip_record(service, key, f"{type(exc).__name__}: {exc}")
        return None
    if instance.service != service:
        skip_record(service, key, f"it holds an instance of {instance.service!r}")
        return None
    return instance


# ------------------------------------------------------------------------ checking URLs


def split_url(url: str) -> tuple[SplitResult, dict[str, str]]:
    """``url`` split, and its query as a dict (the last value of a repeated parameter)."""
    parts = urlsplit(url)
    return parts, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}


def check_hosts(url: str, netloc: str) -> None:
    """Every ``host[:port]`` in ``netloc`` (comma-separated) must have a port in [1, 65535]."""
    for item in netloc.rpartition("@")[2].split(","):
        host_port = item.rpartition("]")[2] if item.startswith("[") else item
        _, sep, port = host_port.rpartition(":")
        if sep and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise InvalidURLError(
                f"the port {port!r} of 'url' must be an integer in [1, 65535]: {url!r}"
            )


def query_of(url: str, query: Mapping[str, str], name: str, kind: type[int] | type[float]) -> Any:
    """The query parameter ``name`` as a number > 0 (None when absent)."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not (value > 0 and math.isfinite(value)):
        what = "an integer" if kind is int else "a number"
        raise InvalidURLError(
            f"the query parameter {name!r} must be {what} > 0: {raw!r} in {url!r}"
        )
    return value


def query_seconds(url: str, query: Mapping[str, str], options: dict[str, Any], *names: str) -> None:
    """Each of ``names`` present in ``query``, as seconds > 0, into ``options`` (unless set)."""
    for name in names:
        value = query_of(url, query, name, float)
        if value is not None:
            options.setdefault(name, value)
