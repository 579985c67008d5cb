"""The demo's downstream: a real TCP server on loopback whose health the script switches.

The protocol is one line each way: the caller sends ``GET <id>``, the server answers
``OK <id>``, one request per connection. ``down`` really closes the listening socket, so callers
get ``ConnectionRefusedError`` from the kernel; ``start()`` afterwards listens on the same port
again. ``slow`` answers after ``slow_delay`` seconds, long after the caller gave up.
"""

from __future__ import annotations

import asyncio
import errno
from random import Random
from typing import Literal

__all__ = ["Downstream", "Mode"]

Mode = Literal["healthy", "slow"]

HOST = "127.0.0.1"
HEALTHY_LATENCY = (0.001, 0.005)
# Rebinding the port can fail for a moment if a caller's connect happened to pick the very same
# port as its own source port while the server was down (a TCP self-connect); it goes away as
# soon as that caller closes its socket.
_REBIND_TRIES = 50
_REBIND_PAUSE = 0.01


class Downstream:
    """A line-protocol server on ``127.0.0.1``; ``requests`` counts the requests it read."""

    def __init__(self, *, rng: Random, slow_delay: float = 2.0) -> None:
        self.mode: Mode = "healthy"
        self.requests = 0
        self.port = 0
        self.slow_delay = slow_delay
        self._rng = rng
        self._server: asyncio.Server | None = None
        # Every accepted connection with the task serving it, from the moment of accept: a
        # handler task that has not started yet must still be closed by stop().
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, mode: Mode = "healthy") -> None:
        """Listen (on the same port as before, after the first start) and serve in ``mode``."""
        self.mode = mode
        if self._server is not None:
            return
        for _ in range(_REBIND_TRIES):
            try:
                self._server = await asyncio.start_server(self._accept, HOST, self.port)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or self.port == 0:
                    raise
                await asyncio.sleep(_REBIND_PAUSE)
        else:
            raise OSError(errno.EADDRINUSE, f"port {self.port} stayed busy after the outage")
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 0.0) -> None:
        """Close the port, give requests in progress ``grace`` seconds to finish (a graceful
        shutdown), then drop the connections still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = list(self._connections)
        if handlers and grace > 0:
            await asyncio.wait(handlers, timeout=grace)
        for task, writer in list(self._connections.items()):
            task.cancel()
            writer.close()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback that starts the task itself, so the task is known from the start.
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._connections[task] = writer
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        writer = self._connections.pop(task, None)
        if writer is not None:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            self.requests += 1
            words = line.split()
            if len(words) != 2 or words[0] != b"GET":
                writer.write(b"ERR bad request\n")
                return
            slow = self.mode == "slow"
            delay = self.slow_delay if slow else self._rng.uniform(*HEALTHY_LATENCY)
            await asyncio.sleep(delay)
            writer.write(b"OK " + words[1] + b"\n")
            await writer.drain()
        except OSError:
            pass  # the caller gave up and hung up: nothing to answer
