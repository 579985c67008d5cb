"""Self-registration for servers: register on start, and leave in the right order on shutdown.

The order matters more than anything else here. On shutdown a server must

1. **deregister first**, so clients' caches drop it (watches deliver the removal within
   milliseconds to ``propagation_delay``, default 0.5 s), while it still serves what arrives;
2. **then drain**: stop accepting, finish the requests in flight (up to ``drain_timeout``);
3. **then exit**.

Closing the socket first (what a bare server does on SIGTERM) turns every call still routed to
it into a connection error; deregistering last leaves it listed while it is gone.

- ``Registration``: the steps as an async context manager, for any server.
- ``RegisteredASGI``: ASGI middleware registering when the app's lifespan has started and
  deregistering + draining when the server announces shutdown; it also counts requests in
  flight. Servers that stop accepting before the lifespan shutdown (uvicorn does) make step 1
  late; ``serve_asgi`` fixes that for uvicorn by deregistering on the signal itself. Under
  uvicorn the lifespan startup also ends *before* the socket is opened, so ``serve_asgi``
  registers only once uvicorn listens: a client never learns of an instance that refuses it.
- ``serve_grpc``: the same for a ``grpc.aio`` server (``server.stop(grace)`` drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from interlink._closing import AsyncStarting
from interlink.discovery.instance import ServiceInstance
from interlink.discovery.registry import DEFAULT_TTL, Lease, Registry

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "RegisteredASGI",
    "Registration",
    "quiet_server",
    "serve_asgi",
    "serve_grpc",
    "uvicorn_server_type",
]

log = logging.getLogger("interlink.discovery")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Registration(AsyncStarting):
    """Keeps ``instance`` registered between ``start()`` and ``stop()``.

    ``stop()`` deregisters, waits ``propagation_delay`` for clients to notice, then waits up
    to ``drain_timeout`` for ``in_flight()`` to reach zero (when given). ``registry`` may be a
    URL; the registry is then closed on ``stop``. Use ``async with`` or call the two steps.
    """

    def __init__(
        self,
        registry: Registry | str,
        instance: ServiceInstance,
        *,
        ttl: float = DEFAULT_TTL,
        propagation_delay: float = 0.5,
        drain_timeout: float = 10.0,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self._owned = isinstance(registry, str)
        self.registry: Registry = (
            Registry.from_url(registry) if isinstance(registry, str) else registry
        )
        self.instance = instance
        self.ttl = ttl
        self.propagation_delay = propagation_delay
        self.drain_timeout = drain_timeout
        self.in_flight = in_flight
        self.lease: Lease | None = None
        self._stopped = False

    async def start(self) -> Lease:
        """Register and start heartbeating."""
        self.lease = await self.registry.register(self.instance, self.ttl)
        log.info(
            "discovery: registered %s/%s at %s",
            self.instance.service,
            self.instance.instance_id,
            self.instance.address,
        )
        return self.lease

    async def deregister(self) -> None:
        """Step 1: leave the registry and give clients ``propagation_delay`` to notice."""
        if self.lease is None or self.lease.closed:
            return
        try:
            await self.lease.aclose()
        except Exception as exc:  # unreachable registry: the TTL removes us instead
            log.warning("discovery: deregistering %s failed: %s", self.instance.address, exc)
        log.info("discovery: deregistered %s/%s", self.instance.service, self.instance.instance_id)
        if self.propagation_delay > 0:
            await asyncio.sleep(self.propagation_delay)

    async def drain(self) -> bool:
        """Step 2: wait until nothing is in flight; False when ``drain_timeout`` ran out."""
        if self.in_flight is None:
            return True
        deadline = time.monotonic() + self.drain_timeout
        while self.in_flight() > 0:
            if time.monotonic() >= deadline:
                log.warning(
                    "discovery: %d request(s) still in flight after %.1fs of draining",
                    self.in_flight(),
                    self.drain_timeout,
                )
                return False
            await asyncio.sleep(0.01)
        return True

    async def stop(self) -> None:
        """Deregister, wait for propagation, drain; close an owned registry. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self.deregister()
        await self.drain()
        if self._owned:
            await self.registry.aclose()


class RegisteredASGI:
    """ASGI middleware: register once the app has started, deregister and drain on shutdown."""

    def __init__(
        self,
        app: ASGIApp,
        registry: Registry | str,
        instance: ServiceInstance,
        *,
        ttl: float = DEFAULT_TTL,
        propagation_delay: float = 0.5,
        drain_timeout: float = 10.0,
    ) -> None:
        self.app = app
        self.in_flight = 0
        self.register_at_startup = True
        """Register when the app's lifespan startup completes (``serve_asgi`` registers later,
        once the socket accepts, and turns this off)."""
        self.registration = Registration(
            registry,
            instance,
            ttl=ttl,
            propagation_delay=propagation_delay,
            drain_timeout=drain_timeout,
            in_flight=lambda: self.in_flight,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.registration.stop()  # before the app tears its resources down
            return message

        async def send_(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and self.register_at_startup:
                try:
                    await self.registration.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except Exception:
            # The app has no lifespan support: run the protocol ourselves.
            if self.registration.lease is not None:
                raise
            await _own_lifespan(self.registration, receive, send, self.register_at_startup)


async def _own_lifespan(
    registration: Registration, receive: Receive, send: Send, register: bool
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await registration.start()
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await registration.stop()
            await send({"type": "lifespan.shutdown.complete"})
            return


@functools.cache
def uvicorn_server_type(handle_signals: bool) -> type[uvicorn.Server]:
    """``uvicorn.Server``, or without ``handle_signals`` a subclass that leaves the process's
    signals alone: whoever runs it owns them (a supervisor, a gRPC server, several servers in
    one process) and ends it with ``server.should_exit = True``."""
    import uvicorn

    if handle_signals:
        return uvicorn.Server

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer


def quiet_server(config: uvicorn.Config) -> uvicorn.Server:
    """A uvicorn server for ``config`` that installs no signal handlers (see
    ``uvicorn_server_type``)."""
    return uvicorn_server_type(False)(config)


async def serve_asgi(
    app: ASGIApp,
    registry: Registry | str,
    instance: ServiceInstance,
    *,
    host: str = "0.0.0.0",
    ttl: float = DEFAULT_TTL,
    propagation_delay: float = 0.5,
    drain_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    **uvicorn_options: Any,
) -> None:
    """Run ``app`` under uvicorn on ``host:instance.port``, registered while it serves.

    It registers once uvicorn's socket accepts connections (uvicorn opens it only after the
    app's lifespan startup), so no client is sent to it before it can answer. On SIGTERM/SIGINT
    (or when ``stop`` is set) it deregisters *before* uvicorn stops accepting, waits
    ``propagation_delay``, then lets uvicorn drain for up to ``drain_timeout`` and exit.
    ``handle_signals=False`` leaves the signals to the caller (several servers in one process,
    as ``serve_grpc`` takes it): ``stop`` then ends it. A failed registration stops the server
    and is raised.
    """
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("serve_asgi needs uvicorn: pip install 'interlink[http]'") from exc

    wrapped = RegisteredASGI(
        app,
        registry,
        instance,
        ttl=ttl,
        propagation_delay=propagation_delay,
        drain_timeout=drain_timeout,
    )
    wrapped.register_at_startup = False
    registration = wrapped.registration
    failed: list[BaseException] = []

    class _Server(uvicorn_server_type(handle_signals)):  # type: ignore[misc] # built at run time
        leaving: asyncio.Task[None] | None = None

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if not self.started:
                return
            try:  # the socket is open now: clients may be told about it
                await registration.start()
            except Exception as exc:
                failed.append(exc)
                self.should_exit = True

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.leaving is None:
                self.leaving = asyncio.get_running_loop().create_task(self._leave())
            else:  # a second signal: the operator insists
                super().handle_exit(sig, frame)

        async def _leave(self) -> None:
            await registration.deregister()
            self.should_exit = True

    config = uvicorn.Config(
        wrapped,
        host=host,
        port=instance.port,
        lifespan="on",
        timeout_graceful_shutdown=int(drain_timeout) or 1,
        **uvicorn_options,
    )
    server = _Server(config)
    if stop is None:
        await server.serve()
    else:

        async def on_stop() -> None:
            await stop.wait()
            server.handle_exit(signal.SIGTERM, None)

        watcher = asyncio.create_task(on_stop())
        try:
            await server.serve()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    if failed:
        raise failed[0]


async def serve_grpc(
    server: Any,
    registry: Registry | str,
    instance: ServiceInstance,
    *,
    ttl: float = DEFAULT_TTL,
    propagation_delay: float = 0.5,
    grace: float = 10.0,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Start a ``grpc.aio`` server, register it, and on ``stop`` (or SIGTERM/SIGINT) leave:
    deregister, wait ``propagation_delay``, ``server.stop(grace)`` (no new RPCs; in-flight ones
    get ``grace`` seconds), return.
    """
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    registration = Registration(registry, instance, ttl=ttl, propagation_delay=propagation_delay)
    await server.start()
    try:
        await registration.start()
        await stop.wait()
        await registration.deregister()
    finally:
        await server.stop(grace)
        await registration.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
