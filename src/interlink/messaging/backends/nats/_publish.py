"""Publishing to JetStream with every PubAck awaited, without nats-py's per-message overhead.

``js.publish_async`` gives each message a semaphore acquire, random reply-token bytes, a
done-callback and, when the PubAck arrives, a JSON parse into a ``PubAck`` dataclass: most of
a windowed publish's time in a pure-Python client. ``PubAcks`` keeps what matters (one reply
subject per message under one wildcard subscription, a future per message, a timeout) and
reads a reply only as far as needed: an acknowledgement unless it holds an error or is the
server's "no responders" status. Same messages on the wire, same server work.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["MSG_ID", "SEND_ERRORS", "PubAcks"]

#: The header JetStream deduplicates publishes by.
MSG_ID = "Nats-Msg-Id"
# What a publish may raise when the server is away or refuses: all become a PublishError.
SEND_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)

_NO_RESPONDERS = "503"


class PubAcks:
    """The PubAcks of one connection's publishes."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._futures: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()

    async def start(self) -> None:
        """Subscribe to the replies (the client re-subscribes by itself after a reconnect)."""
        await self._nc.subscribe(self._prefix + "*", cb=self._reply)

    async def _reply(self, msg: Msg) -> None:
        future = self._futures.pop(msg.subject[len(self._prefix) :], None)
        if future is None or future.done():
            return
        data = msg.data
        if b'"error"' in data:
            try:
                error = json.loads(data).get("error")
                if error is not None:
                    nats.js.errors.APIError.from_error(error)  # raises the matching error
            except Exception as exc:  # (nats-py's own publish_async lets this escape)
                future.set_exception(exc)
                return
        elif not data and msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        future.set_result(None)

    async def send_one(
        self, subject: str, data: bytes, headers: Mapping[str, str], within: float
    ) -> BaseException | None:
        """Publish one message and wait up to ``within`` s for its PubAck; the error if it
        was not confirmed (sending, refusal or timeout, as ``send`` reports them). A serial
        publish's path: ``send`` with one message, without what only a batch needs (lists,
        ``asyncio.wait``'s waiter and callbacks, sorting the failures)."""
        loop = asyncio.get_running_loop()
        token = str(next(self._tokens))
        future = self._futures[token] = loop.create_future()
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)  # type: ignore[arg-type]
            timer = loop.call_later(within, _expire, future)
            try:
                await future
            finally:
                timer.cancel()
        except Exception as exc:  # not sent, refused (set by _reply), or no PubAck in time
            return exc
        finally:
            self._futures.pop(token, None)  # (the reply took it already, unless it never came)
        return None

    async def send(
        self, subject: str, items: Sequence[tuple[bytes, Mapping[str, str]]], within: float
    ) -> list[tuple[int, BaseException]]:
        """Publish each ``(data, headers)`` and wait up to ``within`` s for the PubAcks;
        returns ``(index, error)`` of every message not confirmed. A message that could not
        even be sent (and all after it) fails with the sending error."""
        loop = asyncio.get_running_loop()
        futures = self._futures
        prefix, publish, tokens = self._prefix, self._nc.publish, self._tokens
        sent: list[tuple[str, asyncio.Future[None]]] = []
        failed: list[tuple[int, BaseException]] = []
        try:
            for data, headers in items:
                token = str(next(tokens))
                future = futures[token] = loop.create_future()
                sent.append((token, future))
                await publish(subject, data, reply=prefix + token, headers=headers)  # type: ignore[arg-type]
        except SEND_ERRORS as exc:  # not sent: this one and the rest
            token, _ = sent.pop()
            futures.pop(token, None)
            failed = [(i, exc) for i in range(len(sent), len(items))]
        if sent:
            await asyncio.wait([future for _, future in sent], timeout=within)
        for index, (token, future) in enumerate(sent):
            problem: Any = None
            if not future.done():
                future.cancel()
                futures.pop(token, None)
                problem = TimeoutError("no PubAck")
            elif not future.cancelled():
                problem = future.exception()
            else:
                problem = TimeoutError("no PubAck")
            if problem is not None:
                failed.append((index, problem))
        failed.sort(key=lambda pair: pair[0])
        return failed


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no PubAck"))
