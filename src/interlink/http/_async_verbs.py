"""The verbs of ``AsyncClient`` and ``AsyncServiceClient``: ``request``, ``get``, ``post``... with
their options spelt out, each returning the client's ``_send`` coroutine.

A module of its own because the eight signatures are long and identical, and read best apart
from the client; as a base class they cost nothing per call (a method found on a base class is
looked up through CPython's type cache like one on the class itself).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from interlink.http._request import Params
    from interlink.http._response import Response

__all__ = ["AsyncVerbs"]


class AsyncVerbs:
    """get/post/... and ``request`` as plain functions returning ``_send``'s coroutine, with
    the options spelt out: a verb then costs no coroutine frame of its own and no dict of
    keyword arguments, on every request."""

    __slots__ = ()

    # the subclass's: (method, url, params, headers, content, json, timeout, fallback), positional
    _send: Callable[..., Coroutine[Any, Any, Response]]

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """Send a request through the target service's policies.

        ``timeout`` shrinks the deadline for this call (never extends the caller's).
        ``fallback``: a ``Response``, or a callable (sync or async) given the error, answering
        when the call fails (a failure answer, an error or a rejection).
        """
        return self._send(method.upper(), url, params, headers, content, json, timeout, fallback)

    def get(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """GET ``url`` (idempotent: retried on failure)."""
        return self._send("GET", url, params, headers, content, json, timeout, fallback)

    def head(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """HEAD ``url`` (idempotent)."""
        return self._send("HEAD", url, params, headers, content, json, timeout, fallback)

    def options(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """OPTIONS ``url`` (idempotent)."""
        return self._send("OPTIONS", url, params, headers, content, json, timeout, fallback)

    def put(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """PUT ``url`` (idempotent)."""
        return self._send("PUT", url, params, headers, content, json, timeout, fallback)

    def delete(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """DELETE ``url`` (idempotent)."""
        return self._send("DELETE", url, params, headers, content, json, timeout, fallback)

    def post(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """POST ``url``: retried only with an ``Idempotency-Key`` header."""
        return self._send("POST", url, params, headers, content, json, timeout, fallback)

    def patch(
        self,
        url: str,
        *,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Any = None,
    ) -> Coroutine[Any, Any, Response]:
        """PATCH ``url``: retried only with an ``Idempotency-Key`` header."""
        return self._send("PATCH", url, params, headers, content, json, timeout, fallback)
