"""What every service of the food-delivery system shares: settings, topics, a small database
helper, the chaos switches and the way a process serves, registers and stops.

Everything is configured by environment variables (the supervisor sets them from
``system.yaml``; a Kubernetes ConfigMap sets the same names), so the same code runs on the
embedded defaults (SQLite files under one state directory) and on real servers (NATS or
RabbitMQ, PostgreSQL, Redis or etcd for discovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlink.discovery import ServiceInstance
from interlink.discovery.serve import quiet_server
from interlink.resilience.events import PolicyEvent, RetryScheduled, StateChanged

log = logging.getLogger("food")


@dataclass(frozen=True, slots=True)
class Settings:
    """Where this service finds the broker, the registry and its database, read from the
    environment (``FOOD_*`` and ``INTERLINK_*`` variables, see ``system.yaml``)."""

    service: str
    instance_id: str
    host: str
    advertise_host: str
    port: int
    grpc_port: int
    state_dir: Path
    broker: str
    registry: str
    database: str
    saga_store: str
    namespace: str
    idempotency: str | None
    #: gRPC without sockets (a monolith: every service in one process).
    inprocess: bool = False
    env: Mapping[str, str] = field(repr=False, default_factory=dict)

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings of ``service`` from ``environ`` (default: ``os.environ``)."""
        env = dict(os.environ if environ is None else environ)
        state = Path(env.get("FOOD_STATE_DIR", ".interlink/food-delivery")).resolve()
        state.mkdir(parents=True, exist_ok=True)

        def url(name: str, default: str) -> str:
            value = env.get(name) or default
            return value.replace("{state}", str(state))

        prefix = f"FOOD_{service.upper()}_"
        return cls(
            service=service,
            instance_id=env.get(prefix + "INSTANCE", f"{service}-{socket.gethostname()}"),
            host=env.get("FOOD_HOST", "127.0.0.1"),
            advertise_host=env.get("FOOD_ADVERTISE_HOST", env.get("FOOD_HOST", "127.0.0.1")),
            port=int(env.get(prefix + "PORT", "0")),
            grpc_port=int(env.get(prefix + "GRPC_PORT", "0")),
            state_dir=state,
            broker=url("INTERLINK_BROKER", "sqlite:///{state}/broker.db"),
            registry=url("INTERLINK_REGISTRY", "sqlite:///{state}/registry.db"),
            database=url(prefix + "DB", f"sqlite:///{{state}}/{service}.db"),
            saga_store=url("INTERLINK_SAGA_STORE", "sqlite:///{state}/sagas.db"),
            namespace=env.get("FOOD_NAMESPACE", "food"),
            idempotency=url("INTERLINK_IDEMPOTENCY", "") or None,
            inprocess=env.get("INTERLINK_INPROCESS", "") in ("1", "true", "yes"),
            env=env,
        )

    def flag(self, name: str, default: str = "") -> str:
        """A service-specific switch: ``FOOD_<SERVICE>_<NAME>``."""
        return self.env.get(f"FOOD_{self.service.upper()}_{name}", default)

    def topic(self, name: str) -> str:
        """A topic of this system, prefixed by its namespace (several systems share a broker)."""
        return f"{self.namespace}.{name}"

    def table(self, name: str) -> str:
        """A table of this system, prefixed by its namespace (several share a database)."""
        return f"{self.namespace}_{name}".replace("-", "_").replace(".", "_")

    def instance(self, port: int, protocol: str = "http", **metadata: str) -> ServiceInstance:
        """This process as discovery lists it."""
        return ServiceInstance(
            self.service,
            self.instance_id,
            self.advertise_host,
            port,
            protocol=protocol,
            metadata=metadata,
        )


# -- topics ------------------------------------------------------------------------------------

ORDER_PLACED = "orders.placed"
ORDER_REPLIES = "orders.replies"
PAYMENT_AUTHORIZE = "payments.authorize"
PAYMENT_REFUND = "payments.refund"
DISPATCH_ASSIGN = "dispatch.assign"
DISPATCH_RELEASE = "dispatch.release"
NOTIFY = "notifications.send"


# -- the database --------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$\d+")


class Database:
    """One service's own database: SQLite (a file, the embedded default) or PostgreSQL.

    SQL is written once in PostgreSQL's dialect with ``$1`` placeholders (SQLite understands
    ``ON CONFLICT DO NOTHING`` too); ``transaction()`` yields a ``Tx`` whose ``.raw`` is the
    driver's connection, for ``Outbox.add``/``aadd`` in the same transaction.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._pool: Any = None
        self._sqlite: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self, schema: Iterable[str] = ()) -> None:
        """Connect and create the tables in ``schema``."""
        if self.postgres:
            import asyncpg

            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=8)
        else:
            path = self.url.removeprefix("sqlite:///")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._sqlite = conn
        async with self.transaction() as tx:
            for sql in schema:
                await tx.execute(sql)

    async def create_outbox(self, outbox: Any) -> None:
        """Create ``outbox``'s table in this database (the writer may come before the relay)."""
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                await outbox.acreate_tables(conn)
        else:
            outbox.create_tables(self._sqlite)

    async def close(self) -> None:
        """Release the connections."""
        if self._pool is not None:
            await self._pool.close()
        if self._sqlite is not None:
            self._sqlite.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One transaction: committed when the block ends, rolled back when it raises.

        SQLite runs on the event loop's thread: a local write in WAL mode takes tens of
        microseconds, less than the hop to a worker thread would, and one lock keeps the
        transactions of concurrent handlers apart.
        """
        if self._pool is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                yield Tx(conn, postgres=True)
            return
        conn = self._sqlite
        assert conn is not None, "Database.open() first"
        async with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(conn, postgres=False)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


class Tx:
    """A transaction in progress (see ``Database.transaction``)."""

    def __init__(self, raw: Any, *, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        if self.postgres:
            status: str = await self.raw.execute(sql, *args)
            tail = status.rsplit(" ", 1)[-1]
            return int(tail) if tail.isdigit() else 0
        return int(self.raw.execute(_PLACEHOLDER.sub("?", sql), args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of one query."""
        if self.postgres:
            return [tuple(r) for r in await self.raw.fetch(sql, *args)]

        return list(self.raw.execute(_PLACEHOLDER.sub("?", sql), args).fetchall())

    async def add_event(self, outbox: Any, topic: str, message: Any, *, key: str) -> None:
        """Write ``message`` to ``topic`` through ``outbox`` in this transaction."""
        if self.postgres:
            await outbox.aadd(self.raw, topic, message, key=key)
        else:
            outbox.add(self.raw, topic, message, key=key)


# -- chaos ---------------------------------------------------------------------------------------


class Chaos:
    """Switches an operator flips on a running system (``interlink chaos set pricing
    fail=1.0``): read from ``<state>/chaos.json``, re-read when the file changes."""

    #: Seconds between two looks at the file.
    REFRESH = 0.2

    def __init__(self, state_dir: Path, service: str) -> None:
        self._path = state_dir / "chaos.json"
        self._service = service
        self._mtime = -1.0
        self._checked = 0.0
        self._values: dict[str, float] = {}

    def get(self, name: str, default: float = 0.0) -> float:
        """The current value of switch ``name`` for this service."""
        now = time.monotonic()
        if now - self._checked > self.REFRESH:
            self._checked = now
            try:
                mtime = self._path.stat().st_mtime
            except FileNotFoundError:
                self._values = {}
            else:
                if mtime != self._mtime:
                    self._mtime = mtime
                    with contextlib.suppress(OSError, ValueError):
                        data = json.loads(self._path.read_text())
                        self._values = {
                            k: float(v) for k, v in dict(data.get(self._service, {})).items()
                        }
        return self._values.get(name, default)


def share(key: str, rate: float) -> bool:
    """Whether ``key`` falls in the first ``rate`` share of all keys: a stable, per-key choice,
    so that a repeated command gets the same answer and a test can tell which keys were hit."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    digest = 0
    for ch in key.encode():
        digest = (digest * 131 + ch) % 1_000_003
    return (digest % 10_000) < rate * 10_000


# -- policy events -------------------------------------------------------------------------------


class PolicyLog:
    """A listener keeping what the operator table shows: breaker transitions and retries."""

    def __init__(self) -> None:
        self.transitions: list[dict[str, Any]] = []
        self.retries: dict[str, int] = {}

    def __call__(self, event: PolicyEvent) -> None:
        if isinstance(event, StateChanged):
            self.transitions.append(
                {"name": event.name, "at": time.time(), "old": event.old, "new": event.new}
            )
            log.info("breaker %s: %s -> %s", event.name, event.old, event.new)
        elif isinstance(event, RetryScheduled):
            self.retries[event.name] = self.retries.get(event.name, 0) + 1


# -- serving -------------------------------------------------------------------------------------


def configure_logging(service: str) -> None:
    """One line per record; the logger's name (``food.<service>``) says who wrote it, also when
    every service shares one process (a monolith). With ``INTERLINK_TRACES`` set (``interlink
    up`` sets it), the process also records traces there (see ``observe``)."""
    logging.basicConfig(
        level=os.environ.get("FOOD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    observe(service)


_traced: list[str] = []


def observe(service: str) -> None:
    """Trace this process into ``$INTERLINK_TRACES`` (once per process: in a monolith the first
    service names it). Off when the variable is unset or empty: the scenarios measure the
    system without it."""
    url = os.environ.get("INTERLINK_TRACES", "")
    if not url or _traced:
        return
    from interlink.tracing import setup

    setup(service if os.environ.get("INTERLINK_INPROCESS", "") != "1" else "food-delivery", url)
    _traced.append(service)


@functools.cache
def policy_metrics() -> Any:
    """The process's Prometheus listener for policy events (one registry per process, so one
    listener, whichever services share the process); served on every ``/metrics``."""
    from interlink.metrics import PolicyMetrics

    return PolicyMetrics()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def serve_admin(app: Any, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve ``app`` (health and stats) under uvicorn until ``stop`` is set; signals are left
    to the caller (the gRPC server's own shutdown drives ``stop``)."""
    import uvicorn

    server = quiet_server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    await stop.wait()
    server.should_exit = True
    await task


async def _health(_: Any) -> Any:
    return json_response({"ok": True})


def http_app(
    stats: Callable[[], Awaitable[dict[str, Any]]],
    *,
    routes: Iterable[Any] = (),
    lifespan: Any = None,
) -> Any:
    """A service's HTTP app: ``routes``, ``/healthz`` (the probes) and ``/stats`` (what the
    scenario tables read, from ``stats()``)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def stats_route(_: Any) -> Any:
        return json_response(await stats())

    from interlink.metrics import metrics_app

    policy_metrics()  # registered before the first scrape, so its gauges are there from the start
    return Starlette(
        routes=[
            *routes,
            Route("/healthz", _health),
            Route("/stats", stats_route),
            Route("/metrics", metrics_app()),
        ],
        lifespan=lifespan,
    )


async def serve_http(settings: Settings, app: Any, stop: asyncio.Event | None = None) -> None:
    """Serve ``app`` on the service's port, registered in discovery while it serves; it
    leaves (deregister, drain) on SIGTERM, or when ``stop`` is set (then signals are the
    caller's: several services in one process)."""
    from interlink.discovery.serve import serve_asgi

    await serve_asgi(
        app,
        settings.registry,
        settings.instance(settings.port, metrics="/metrics"),
        host=settings.host,
        log_level="warning",
        drain_timeout=2.0,
        stop=stop,
        handle_signals=stop is None,
    )


async def serve_grpc_service(
    settings: Settings,
    server: Any,
    stats: Callable[[], Awaitable[dict[str, Any]]],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve a gRPC ``server`` (its servicers added) on the service's gRPC port, registered in
    discovery as ``protocol="grpc"``, with an HTTP admin port for the probes and ``/stats``."""
    from interlink.discovery.serve import serve_grpc

    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    handle_signals = stop is None
    stop = stop or asyncio.Event()
    instance = settings.instance(port, "grpc", admin=str(settings.port), metrics=str(settings.port))
    admin = asyncio.create_task(serve_admin(http_app(stats), settings.host, settings.port, stop))
    try:
        await serve_grpc(
            server,
            settings.registry,
            instance,
            grace=2.0,
            stop=stop,
            handle_signals=handle_signals,
        )
    finally:
        stop.set()
        await admin


def grpc_server(settings: Settings) -> Any:
    """A ``grpc.aio`` server, or in a monolith its in-process stand-in: the same servicers."""
    from interlink import grpc as ilgrpc

    if settings.inprocess:
        from interlink.grpc.local import LocalServer

        return LocalServer()
    import grpc

    return grpc.aio.server(interceptors=[ilgrpc.AioServerInterceptor()])


def json_response(data: Any, status: int = 200) -> Any:
    """A Starlette JSON response (imported here so services stay short)."""
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status)


def run(main: Callable[[], Any], *, fast_loop: bool = False) -> None:
    """Run a service's ``main`` coroutine function: the body of ``python -m``. With
    ``fast_loop``, on uvloop when it is installed (the gateway, whose loop is its data plane)."""
    runner: Callable[[Any], Any] = asyncio.run
    if fast_loop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main())
