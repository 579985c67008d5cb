"""The answer a client returns: status, headers and the whole body, read before returning."""

from __future__ import annotations

import json as _json
from collections.abc import Mapping
from typing import Any

from interlink.errors import HTTPStatusError
from interlink.http.classify import is_failure_status

__all__ = ["Response"]


class Response:
    """An HTTP answer, fully read: ``status``, ``headers`` (case-insensitive for answers from
    the network), ``content`` (bytes), ``text``, ``json()``.

    ``source`` says where it came from: ``"network"``, ``"stale"`` (a stale-if-error answer from
    the cache) or ``"fallback"`` (the caller's fallback). The body is read in full so that the
    connection goes back to the pool at once and the policies time the whole exchange.
    """

    __slots__ = ("content", "headers", "method", "source", "status", "url")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        *,
        url: str = "",
        method: str = "GET",
        source: str = "network",
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {} if headers is None else headers
        self.content = content
        self.url = url
        self.method = method
        self.source = source

    @property
    def is_success(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300

    @property
    def is_failure(self) -> bool:
        """True for the statuses interlink counts as the callee's failure (5xx, 408, 429)."""
        return is_failure_status(self.status)

    @property
    def encoding(self) -> str:
        """The ``charset`` of the content type, else UTF-8."""
        ctype = self.headers.get("content-type") or self.headers.get("Content-Type") or ""
        for part in ctype.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip('"')
        return "utf-8"

    @property
    def text(self) -> str:
        """The body decoded with ``encoding`` (undecodable bytes replaced)."""
        return self.content.decode(self.encoding, errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.content)

    def raise_for_status(self) -> Response:
        """Raise ``HTTPStatusError`` for a 4xx or 5xx answer; return self otherwise."""
        if self.status >= 400:
            raise HTTPStatusError(self, self.status, self.url)
        return self

    def copy_with(self, *, source: str) -> Response:
        """The same answer, marked as coming from ``source``."""
        return Response(
            self.status,
            self.headers,
            self.content,
            url=self.url,
            method=self.method,
            source=source,
        )

    def __repr__(self) -> str:
        extra = "" if self.source == "network" else f" ({self.source})"
        return f"<Response [{self.status}] {self.method} {self.url}{extra}>"
