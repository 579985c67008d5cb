"""InterlinkMiddleware: correlation id, deadline, trace context and JSON errors, driven as
plain ASGI in-process, and under Starlette."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink import remaining
from interlink.context import correlation_id
from interlink.errors import DeadlineExceeded
from interlink.http import InterlinkMiddleware
from interlink.http.middleware import error_body

Message = dict[str, Any]


class Recorder:
    """A trivial ASGI app that records what it saw and answers 200."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        self.seen = {"correlation_id": correlation_id(), "remaining": remaining()}
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})


def call(app: Any, headers: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    """Drive ``app`` with one GET; returns the messages it sent."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "query_string": b"",
        "headers": headers or [],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def status_of(sent: list[Message]) -> int:
    return int(sent[0]["status"])


def header(sent: list[Message], name: bytes) -> bytes | None:
    return dict(sent[0]["headers"]).get(name)


def body_json(sent: list[Message]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_assigns_a_correlation_id_and_echoes_it() -> None:
    """No incoming id: one is assigned, visible to the handler and echoed in the response."""
    app = Recorder()
    sent = call(InterlinkMiddleware(app))
    cid = app.seen["correlation_id"]
    assert cid is not None
    assert len(cid) == 32
    assert header(sent, b"x-request-id") == cid.encode()
    assert header(sent, b"x-a") == b"1"


def test_keeps_a_valid_incoming_correlation_id() -> None:
    """A valid incoming id becomes the handler's correlation id."""
    app = Recorder()
    sent = call(InterlinkMiddleware(app), [(b"x-request-id", b"order-7:abc")])
    assert app.seen["correlation_id"] == "order-7:abc"
    assert header(sent, b"x-request-id") == b"order-7:abc"


@pytest.mark.parametrize(
    "bad",
    [b"x" * 129, b"has space", b'quote"d', b"semi;colon", b"\xc3\xa9t\xc3\xa9", b"", b"abc\n"],
)
def test_an_invalid_correlation_id_is_answered_400(bad: bytes) -> None:
    """Oversized ids and ids with characters outside the safe set: 400 JSON, handler not run."""
    app = Recorder()
    sent = call(InterlinkMiddleware(app), [(b"x-request-id", bad)])
    assert status_of(sent) == 400
    body = body_json(sent)
    assert body["error"] == "bad_request"
    assert "x-request-id" in body["detail"]
    assert len(body["correlation_id"]) == 32
    assert app.calls == 0


def test_the_deadline_header_becomes_the_current_deadline() -> None:
    """``x-request-timeout-ms: 250``: the handler has at most 0.25 s."""
    app = Recorder()
    call(InterlinkMiddleware(app), [(b"x-request-timeout-ms", b"250")])
    assert 0.2 < app.seen["remaining"] <= 0.25


def test_max_timeout_caps_the_callers_deadline() -> None:
    """A caller cannot give the handler more than ``max_timeout``."""
    app = Recorder()
    call(InterlinkMiddleware(app, max_timeout=0.1), [(b"x-request-timeout-ms", b"60000")])
    assert 0.05 < app.seen["remaining"] <= 0.1


def test_default_timeout_applies_without_a_header() -> None:
    """Requests that name no deadline get ``default_timeout``; without it, none."""
    app = Recorder()
    call(InterlinkMiddleware(app, default_timeout=0.5))
    assert 0.4 < app.seen["remaining"] <= 0.5
    call(InterlinkMiddleware(app))
    assert app.seen["remaining"] is None


def test_an_expired_request_is_answered_504_without_running_the_handler() -> None:
    """``x-request-timeout-ms: 0``: the caller has given up; 504 JSON, no handler."""
    app = Recorder()
    sent = call(
        InterlinkMiddleware(app), [(b"x-request-timeout-ms", b"0"), (b"x-request-id", b"r1")]
    )
    assert status_of(sent) == 504
    assert body_json(sent) == {
        "error": "deadline_exceeded",
        "detail": "the caller's deadline had passed before the request was handled",
        "correlation_id": "r1",
    }
    assert header(sent, b"x-request-id") == b"r1"
    assert app.calls == 0


@pytest.mark.parametrize("bad", [b"-5", b"abc", b"1.5", b"", b"12345678901", b"1_000", b"\xff"])
def test_a_malformed_deadline_is_answered_400(bad: bytes) -> None:
    """Negative, non-numeric, fractional, empty or absurd deadlines: 400 JSON naming the header."""
    app = Recorder()
    sent = call(InterlinkMiddleware(app), [(b"x-request-timeout-ms", bad)])
    assert status_of(sent) == 400
    body = body_json(sent)
    assert body["error"] == "bad_request"
    assert "x-request-timeout-ms" in body["detail"]
    assert app.calls == 0


@given(st.binary(max_size=40))
def test_any_deadline_header_gets_a_proper_answer(raw: bytes) -> None:
    """Whatever the header holds, the answer is 200, 400 or 504, never an exception."""
    app = Recorder()
    sent = call(InterlinkMiddleware(app), [(b"x-request-timeout-ms", raw)])
    assert status_of(sent) in (200, 400, 504)


def test_an_unhandled_error_is_answered_500_without_a_stack_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exception is logged; the caller gets JSON with no trace of the internals."""

    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("secret internals at /srv/app.py line 12")

    with caplog.at_level(logging.ERROR, logger="interlink.http"):
        sent = call(InterlinkMiddleware(boom), [(b"x-request-id", b"r2")])
    assert status_of(sent) == 500
    raw = b"".join(m.get("body", b"") for m in sent[1:])
    assert b"secret" not in raw
    assert b"Traceback" not in raw
    assert body_json(sent) == {
        "error": "internal_error",
        "detail": "internal server error",
        "correlation_id": "r2",
    }
    assert "secret internals" in caplog.text


def test_catch_errors_off_lets_the_server_handle_them() -> None:
    """With ``catch_errors=False`` the exception propagates to the server."""

    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        call(InterlinkMiddleware(boom, catch_errors=False))


def test_an_error_after_the_response_started_propagates() -> None:
    """Once headers are sent, a JSON error cannot be sent: the error goes to the server."""

    async def half(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError, match="mid-stream"):
        call(InterlinkMiddleware(half))


def test_a_handler_outliving_the_deadline_is_answered_504() -> None:
    """The deadline passes before the handler answers: it is cancelled and 504 is sent."""
    cancelled: list[bool] = []

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent = call(InterlinkMiddleware(slow), [(b"x-request-timeout-ms", b"30")])
    assert status_of(sent) == 504
    assert cancelled == [True]


def test_deadline_exceeded_from_a_downstream_call_is_a_504() -> None:
    """A handler whose own outgoing call ran out of time answers 504, not 500."""

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        raise DeadlineExceeded("calling menu")

    assert status_of(call(InterlinkMiddleware(handler))) == 504


def test_a_started_response_is_not_cut_by_the_deadline() -> None:
    """Once the answer has begun, the deadline no longer cancels it."""

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.06)
        await send({"type": "http.response.body", "body": b"done"})

    sent = call(InterlinkMiddleware(streaming), [(b"x-request-timeout-ms", b"20")])
    assert status_of(sent) == 200
    assert sent[-1]["body"] == b"done"


def test_non_http_scopes_pass_through() -> None:
    """Lifespan and websocket scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def go() -> None:
        async def receive() -> Message:
            return {}

        async def send(message: Message) -> None:
            return None

        await InterlinkMiddleware(app)({"type": "lifespan"}, receive, send)

    asyncio.run(go())
    assert seen == ["lifespan"]


def test_bad_options_are_refused() -> None:
    """Timeouts must be positive."""
    with pytest.raises(ValueError, match="'max_timeout' must be"):
        InterlinkMiddleware(Recorder(), max_timeout=0)
    with pytest.raises(ValueError, match="'default_timeout' must be"):
        InterlinkMiddleware(Recorder(), default_timeout=-1)


def test_error_body_shape() -> None:
    """Every error body has exactly error, detail and correlation_id."""
    assert json.loads(error_body("e", "d", "c")) == {
        "error": "e",
        "detail": "d",
        "correlation_id": "c",
    }


def test_works_under_starlette() -> None:
    """As Starlette middleware: ids echoed, route errors become JSON 500, deadlines read."""
    from http_support import serve
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"cid": correlation_id(), "left": remaining()})

    async def fail(request: Request) -> JSONResponse:
        raise RuntimeError("hidden")

    app = Starlette(routes=[Route("/ok", ok), Route("/fail", fail)])
    app.add_middleware(InterlinkMiddleware)
    with serve(app) as base, httpx.Client(base_url=base) as client:
        r = client.get("/ok", headers={"x-request-id": "s1", "x-request-timeout-ms": "900"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "s1"
        assert r.json()["cid"] == "s1"
        assert 0 < r.json()["left"] <= 0.9
        r = client.get("/fail")
        assert r.status_code == 500
        assert r.json()["error"] == "internal_error"
        assert "hidden" not in r.text
        r = client.get("/ok", headers={"x-request-timeout-ms": "-1"})
        assert r.status_code == 400
