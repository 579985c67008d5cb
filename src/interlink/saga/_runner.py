"""Carrying out one attempt of an action or a compensation: a local call (a ``def`` in a worker
thread, an ``async def`` awaited), wrapped in the step's policy, bounded by its timeout; or a
command over the broker followed by the wait for its reply."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from interlink.context import correlation_id
from interlink.outbox.sink import Prepared, Sink
from interlink.resilience.deadline import deadline
from interlink.saga.definition import Send, Step, StepContext
from interlink.saga.errors import InvalidReply, SagaError, StepFailed, StepUnavailable
from interlink.saga.stores import SagaStore
from interlink.tracing.propagation import inject as inject_trace

__all__ = [
    "ReplyBox",
    "encode_body",
    "reply_body",
    "reply_headers",
    "reply_says_ok",
    "run_attempt",
    "slot_of",
]

#: Headers a saga command carries and its reply must echo.
SAGA_ID, SAGA_STEP, SAGA_ATTEMPT = "saga-id", "saga-step", "saga-attempt"
IDEMPOTENCY_KEY, REPLY_TO = "idempotency-key", "reply-to"
#: On an action's command: when (Unix time, seconds) the orchestrator stops waiting for this
#: attempt's reply. Work started later may come after the saga gave up: refuse it.
SAGA_EXPIRES_AT = "saga-expires-at"
_POLL = 0.5  # seconds between looks in the store while waiting for a reply another process got


def encode_body(body: Any) -> bytes:
    """Bytes as they are; a pydantic model as its JSON; anything else as JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    dump = getattr(body, "model_dump_json", None)
    if dump is not None:
        return str(dump()).encode()
    return json.dumps(body, separators=(",", ":")).encode()


#: What a compensation's reply slot ends with (an action's slot is the step's name).
COMPENSATION_SLOT = ":compensation"


def slot_of(step: str, compensating: bool) -> str:
    """The reply slot of a step's action or compensation."""
    return step + COMPENSATION_SLOT if compensating else step


class ReplyBox:
    """Replies on their way to the attempts waiting for them in this process; the store keeps
    them too, for an attempt in another process or one that starts after the reply came."""

    def __init__(self, store: SagaStore) -> None:
        self._store = store
        self._waiters: dict[tuple[str, str], asyncio.Future[None]] = {}

    def notify(self, saga_id: str, slot: str) -> bool:
        """A reply for (saga, slot) was stored: wake its waiter here; whether there was one."""
        waiter = self._waiters.get((saga_id, slot))
        if waiter is None:
            return False
        if not waiter.done():
            waiter.set_result(None)
        return True

    async def clear(self, saga_id: str, slot: str) -> None:
        """Forget the reply kept for (saga, slot): an answer to an earlier attempt is stale."""
        await self._store.clear_reply(saga_id, slot)

    async def wait(self, saga_id: str, slot: str, attempt: int, seconds: float) -> Any:
        """The body of the first acceptable reply (from this attempt, or a success from any)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        key = (saga_id, slot)
        try:
            while True:
                waiter = self._waiters[key] = loop.create_future()
                found = await self._store.get_reply(saga_id, slot)
                if found is not None:
                    got_attempt, data = found
                    body = _parse(slot, data)
                    if got_attempt == attempt or body.get("ok") is True:
                        return body
                left = end - loop.time()
                if left <= 0:
                    raise TimeoutError(f"no reply to {slot!r} within {seconds:.3g} s")
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, _POLL)):
                        await waiter
        finally:
            self._waiters.pop(key, None)


def _parse(slot: str, data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidReply(slot, f"not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise InvalidReply(slot, 'expected a JSON object with a boolean "ok"')
    return body


def reply_says_ok(data: bytes) -> bool:
    """Whether a kept reply body reports success (an unreadable one does not)."""
    try:
        return _parse("", data).get("ok") is True
    except InvalidReply:
        return False


async def _call(fn: Callable[[StepContext], Any], ctx: StepContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(ctx)
    result = await asyncio.to_thread(fn, ctx)
    if inspect.isawaitable(result):
        return await result
    return result


async def _send(
    send: Send, ctx: StepContext, wait: float, publisher: Sink, replies: ReplyBox
) -> Any:
    slot = slot_of(ctx.step, ctx.compensating)
    body = send.message(ctx) if send.message is not None else ctx.data
    dump = getattr(body, "model_dump", None)
    if dump is not None and not isinstance(body, bytes):
        body = dump(mode="json")
    headers = {
        SAGA_ID: ctx.saga_id,
        SAGA_STEP: slot,
        SAGA_ATTEMPT: str(ctx.attempt),
        IDEMPOTENCY_KEY: ctx.idempotency_key,
        REPLY_TO: send.reply_topic,
    }
    inject_trace(headers)  # the step's span: the participant's work joins the saga's trace
    if not ctx.compensating:  # an undo never expires: it must happen, however late
        headers[SAGA_EXPIRES_AT] = f"{time.time() + wait:.3f}"
    key = send.key(ctx) if send.key is not None else ctx.saga_id
    await replies.clear(ctx.saga_id, slot)
    # A fresh message per attempt (the remote side deduplicates the *effect* by the
    # idempotency key), so a retry after a lost reply is answered again.
    command = Prepared(
        id=f"{ctx.idempotency_key}#{ctx.attempt}",
        topic=send.topic,
        payload=encode_body(body),
        type="bytes" if isinstance(body, bytes) else "json",
        key=key,
        headers=headers,
        correlation_id=correlation_id() or ctx.saga_id,
        created_at=time.time(),
    )
    await publisher.send(send.topic, [command])
    reply = await replies.wait(ctx.saga_id, slot, ctx.attempt, wait)
    if not reply["ok"]:
        error = str(reply.get("error") or "refused")
        if reply.get("retryable") is True:
            raise StepUnavailable(slot, error)
        raise StepFailed(slot, error)
    result = reply.get("result")
    if send.reply_model is not None:
        try:
            validate = getattr(send.reply_model, "model_validate", None)
            model = validate(result) if validate is not None else send.reply_model(result)
        except Exception as exc:
            raise InvalidReply(slot, f"{type(exc).__name__}: {exc}") from None
        dumped = getattr(model, "model_dump", None)
        result = dumped(mode="json") if dumped is not None else model
    return result


async def run_attempt(
    step: Step,
    ctx: StepContext,
    *,
    seconds: float | None,
    publisher: Sink | None,
    replies: ReplyBox,
) -> Any:
    """Run the action (or, with ``ctx.compensating``, the compensation) of ``step`` once, within
    ``seconds`` (a ``Send`` waits for its reply up to the shorter of that and its own
    ``timeout``); return its result, JSON-checked. Raises whatever the attempt raised."""
    target = step.compensation if ctx.compensating else step.action
    if target is None:  # the state machine never asks for a missing compensation
        raise SagaError(f"step {step.name!r} has no compensation")
    if isinstance(target, Send):
        if publisher is None:
            raise SagaError(
                f"step {step.name!r} sends a command but the orchestrator has no publisher"
            )
        wait = target.timeout if seconds is None else min(target.timeout, seconds)
        return await _send(target, ctx, wait, publisher, replies)
    fn: Callable[[StepContext], Any] = target
    run: Callable[[], Awaitable[Any]]
    if step.policy is not None:
        policy = step.policy

        def run() -> Awaitable[Any]:
            return policy.acall(_call, fn, ctx)
    else:

        def run() -> Awaitable[Any]:
            return _call(fn, ctx)

    if seconds is None:
        result = await run()
    else:
        # The deadline rides in the context, so interlink clients inside the step see it and
        # tell the next hop; asyncio.timeout enforces it on this side.
        with deadline(seconds, clock=time.monotonic):
            async with asyncio.timeout(seconds):
                result = await run()
    dump = getattr(result, "model_dump", None)
    if dump is not None:
        result = dump(mode="json")
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"step {step.name!r} returned a value that is not JSON: {exc}") from None
    return result


def reply_body(
    *, ok: bool = True, result: Any = None, error: str | None = None, retryable: bool = False
) -> bytes:
    """The body of a reply to a saga command: ``{"ok": true, "result": ...}`` or
    ``{"ok": false, "error": "..."}``, a refusal: the step fails at once and the saga
    compensates. With ``retryable=True`` a failure says "not now" instead (the saga retries
    the step on its ``retry`` policy, as after a lost connection)."""
    body: dict[str, Any] = {"ok": ok}
    if result is not None:
        body["result"] = result
    if error is not None:
        body["error"] = error
    if retryable and not ok:
        body["retryable"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def reply_headers(command_headers: Mapping[str, str]) -> dict[str, str]:
    """The ``saga-*`` headers a reply must carry, copied from the command's (publish the reply
    to ``command_headers["reply-to"]``)."""
    return {
        k: command_headers[k] for k in (SAGA_ID, SAGA_STEP, SAGA_ATTEMPT) if k in command_headers
    }
