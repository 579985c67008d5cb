"""How the Redis Streams backend calls redis-py: awaits a stopping consumer can always cancel,
the errors that mean the connection was lost, and connections of its own without a socket timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["LOST", "own_connection", "shielded"]

T = TypeVar("T")


async def shielded(call: Awaitable[T]) -> T:
    """Await a redis-py call so that cancelling the caller always works: a cancellation that
    lands inside a command can be swallowed by redis-py (redis/redis-py#2028, #2551), which
    would leave a stopping consumer hanging. The command runs as its own task; a cancelled
    caller stops waiting for it (and cancels it, best effort)."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of an abandoned call as seen (asyncio logs unseen errors)."""
    if not task.cancelled():
        task.exception()


LOST = (RedisConnectionError, RedisTimeoutError, OSError)


def own_connection(client: Any) -> Any:
    """A connection (not yet connected) with the pool's settings except the socket timeout:
    with one, redis-py wraps every write in a task of its own to time it (and the write waits
    for that task's first step); its user bounds each command with one ``asyncio.timeout``."""
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
