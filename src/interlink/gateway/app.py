"""The gateway: the proxy engine configured from ``gateway.yaml``, with reloads, an admin
port and worker processes.

``Gateway(path)`` loads the file, builds a ``RouteTable`` from it and serves it. ``reload()``
(SIGHUP, or a changed file with ``watch``) loads and builds a new table and swaps it in with one
assignment: requests in flight finish on the table they started with, new ones get the new
one; a file that does not validate is refused, logged, and the old table keeps serving. Rate
limit buckets live outside the table, so a reload does not hand every consumer a fresh burst.

The admin port answers ``/healthz`` (the process is up), ``/readyz`` (serving, with a valid
table; 503 while draining) and ``/metrics`` (Prometheus text). With ``workers > 1`` the parent
process forks that many workers, each listening on the same port with ``SO_REUSEPORT`` (the
kernel spreads connections), each with its own admin port (``admin`` port + worker index), and
forwards SIGHUP and SIGTERM to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from interlink.gateway.config import ConfigError, GatewayConfig, RouteConfig, load_config
from interlink.proxy import (
    ApiKey,
    Authenticator,
    Cors,
    FixedUpstream,
    JwtKey,
    Limiter,
    LimitRule,
    Limits,
    MemoryBuckets,
    Policies,
    PoolLimits,
    Proxy,
    RedisBuckets,
    Requirement,
    Route,
    Router,
    RouteSpec,
    RouteTable,
    ServiceUpstream,
    UpstreamPool,
)
from interlink.proxy.errors import ProxyError
from interlink.proxy.http1 import Request, ServerConnection
from interlink.resilience import Bulkhead, CircuitBreaker, Retry, RetryBudget

__all__ = ["Gateway", "build_table", "run"]

log = logging.getLogger("interlink.gateway")


def _retriable(error: BaseException) -> bool:
    """The engine marks which failed attempts may be sent again (see interlink.proxy.engine)."""
    return bool(getattr(error, "retriable", False))


def _policies(route: RouteConfig) -> tuple[Policies | None, CircuitBreaker | None]:
    # The file's keys are the policies' own keywords (see interlink.gateway.config), so each
    # section is handed over whole: a setting added to a policy and its section needs no line here.
    policies: list[object] = []
    breaker = None
    if route.retry is not None:
        retry = route.retry
        budget = None
        if retry.budget is not None:
            budget = RetryBudget(**retry.budget.model_dump(), name=f"{route.name}.budget")
        policies.append(
            Retry(
                **retry.model_dump(exclude={"budget"}),
                retry_on=_retriable,
                budget=budget,
                name=f"{route.name}.retry",
            )
        )
    if route.breaker is not None:
        breaker = CircuitBreaker(route.name, **route.breaker.model_dump())
        policies.append(breaker)
    if route.bulkhead is not None:
        policies.append(Bulkhead(**route.bulkhead.model_dump(), name=f"{route.name}.bulkhead"))
    if not policies:
        return None, None
    return Policies(*policies, name=route.name), breaker


def _authenticator(config: GatewayConfig) -> Authenticator | None:
    auth = config.auth
    if auth is None:
        return None
    keys = []
    for i, key in enumerate(auth.jwt_keys):
        try:
            keys.append(
                JwtKey(
                    algorithm=key.algorithm,
                    secret=key.resolved_secret(),
                    public_key=key.resolved_public_key(),
                    kid=key.kid,
                )
            )
        except (ValueError, OSError) as error:
            raise ConfigError(f"auth.jwt_keys.{i}: {error}") from None
    return Authenticator(
        keys=keys,
        jwks_url=auth.jwks_url,
        issuer=auth.issuer,
        audience=auth.audience,
        leeway=auth.leeway,
        api_keys=[
            ApiKey(consumer=k.consumer, key_sha256=k.key_sha256, scopes=frozenset(k.scopes))
            for k in auth.api_keys
        ],
        api_key_header=auth.api_key_header,
        identity_prefix=auth.identity_prefix,
        cache_size=auth.token_cache_size,
        jwks_ttl=auth.jwks_ttl,
    )


def build_table(config: GatewayConfig, *, resolver: Any = None, buckets: Any = None) -> RouteTable:
    """The ``RouteTable`` that ``config`` describes; ``ConfigError`` names the route at fault.

    ``resolver``: the discovery ``Resolver`` for ``service://`` upstreams; ``buckets``: where
    rate-limit buckets live (default: a new ``MemoryBuckets``).
    """
    routes: list[Route[RouteSpec]] = []
    for i, rc in enumerate(config.routes):
        try:
            policies, breaker = _policies(rc)
            translator = None
            upstream: Any = None
            if rc.grpc is not None:
                from interlink.gateway.grpc import translator_for

                translator = translator_for(rc.grpc, resolver)
            elif isinstance(rc.upstream, str) and rc.upstream.startswith("service://"):
                upstream = ServiceUpstream(rc.upstream.removeprefix("service://"), resolver)
            else:
                urls = [rc.upstream] if isinstance(rc.upstream, str) else list(rc.upstream or [])
                upstream = FixedUpstream(urls)
            limits = tuple(
                LimitRule(
                    name=r.name,
                    rate=r.rate,
                    burst=r.burst if r.burst is not None else max(1, int(r.rate)),
                    per=r.per,
                    on_store_down=r.on_store_down,
                )
                for r in rc.rate_limits
            )
            auth = (
                Requirement(
                    methods=tuple(rc.auth.methods),
                    scopes=frozenset(rc.auth.scopes),
                    claims=dict(rc.auth.claims),
                )
                if rc.auth is not None
                else None
            )
            spec = RouteSpec(
                name=rc.name,
                upstream=upstream,
                timeout=rc.timeout,
                policies=policies,
                auth=auth,
                limits=limits,
                preserve_host=rc.preserve_host,
                cors=rc.cors,
                translator=translator,
                breaker=breaker,
            )
            routes.append(
                Route(
                    name=rc.name,
                    path=rc.match.path,
                    target=spec,
                    hosts=tuple(rc.match.hosts),
                    methods=frozenset(rc.match.methods),
                    headers={k.lower(): v for k, v in rc.match.headers.items()},
                    rewrite=rc.rewrite,
                )
            )
        except (ValueError, ImportError) as error:
            raise ConfigError(f"routes.{i} ({rc.name}): {error}") from None
    cors = config.cors
    return RouteTable(
        router=Router(routes),
        authenticator=_authenticator(config),
        limiter=Limiter(buckets if buckets is not None else MemoryBuckets()),
        cors=Cors(
            allow_origins=frozenset(cors.allow_origins),
            allow_methods=tuple(cors.allow_methods),
            allow_headers=tuple(h.lower() for h in cors.allow_headers),
            expose_headers=tuple(h.lower() for h in cors.expose_headers),
            allow_credentials=cors.allow_credentials,
            max_age=cors.max_age,
        ),
        identity_prefix=config.auth.identity_prefix if config.auth is not None else "x-auth-",
    )


def _freeze_heap(config: GatewayConfig) -> None:
    """Collect once, then move every surviving object out of the collector's sight.

    The table, keys, parsed configuration and imported modules live as long as the process;
    left in the oldest generation, each full collection walks all of them (about 35 ms with
    the benchmark's configuration), a pause that lands on whichever requests are in flight.
    Frozen, a full collection only walks what was allocated since. Before collecting, the
    previous freeze is undone: a table a reload replaced may hold reference cycles, and
    frozen objects are never collected. What the request path imports on first use (PyJWT
    and the cryptography modules it loads, the OpenTelemetry API) is imported first: else
    those thousands of objects would arrive with the first request, after the freeze.
    """
    from interlink.tracing.propagation import api

    api()
    if config.auth is not None and (config.auth.jwt_keys or config.auth.jwks_url):
        import jwt  # noqa: F401

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Gateway:
    """A running gateway (see the module docstring)."""

    def __init__(
        self, path: str | Path, *, worker: int = 0, workers: int | None = None, watch: bool = False
    ) -> None:
        self.path = Path(path)
        self.worker = worker
        self.watch = watch
        self.config = load_config(self.path)
        self.workers = workers or self.config.workers
        self._resolver: Any = None
        self._buckets: Any = None
        self._store_url = self.config.rate_limit_store
        self.proxy: Proxy | None = None
        self._servers: list[asyncio.Server] = []
        self.draining = False
        self.reloads = 0
        self.reload_failures = 0
        self._stopped = asyncio.Event()

    def _make_buckets(self) -> Any:
        if self._store_url == "memory":
            return MemoryBuckets()
        return RedisBuckets(self._store_url, timeout=self.config.rate_limit_timeout)

    def _make_resolver(self) -> Any:
        if self.config.discovery is None:
            return None
        from interlink.discovery import Resolver

        return Resolver.from_url(self.config.discovery)

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Build the table and start listening (and the admin port)."""
        config = self.config
        if config.tracing is not None:  # in the worker, after the fork: its own exporter
            from interlink.tracing import setup

            setup(
                config.tracing.service_name,
                config.tracing.exporter,
                sample_ratio=config.tracing.sample_ratio,
            )
        self._resolver = self._make_resolver()
        self._buckets = self._make_buckets()
        table = build_table(config, resolver=self._resolver, buckets=self._buckets)
        lim = config.limits
        pool = config.upstream_pool
        self.proxy = Proxy(
            table,
            limits=Limits(
                max_header_bytes=lim.max_header_bytes,
                max_body_bytes=lim.max_body_bytes,
                head_timeout=lim.head_timeout,
                body_timeout=lim.body_timeout,
                keepalive_timeout=lim.keepalive_timeout,
            ),
            pool=UpstreamPool(
                PoolLimits(
                    max_connections=pool.max_connections,
                    max_idle=pool.max_idle,
                    idle_timeout=pool.idle_timeout,
                    connect_timeout=pool.connect_timeout,
                    pool_timeout=pool.pool_timeout,
                )
            ),
        )
        host, port = _address(config.listen)
        self._servers.append(
            await self.proxy.serve(host, port, reuse_port=self.workers > 1, sock=sock)
        )
        if config.admin is not None:
            admin_host, admin_port = _address(config.admin)
            if admin_port:
                admin_port += self.worker
            loop = asyncio.get_running_loop()
            limits = Limits(max_body_bytes=1024)
            self._servers.append(
                await loop.create_server(
                    lambda: ServerConnection(self._admin, limits), admin_host, admin_port
                )
            )
        if config.gc_freeze:
            _freeze_heap(config)
        log.info("gateway listening", extra={"listen": self.addresses()})

    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens: the proxy first, then the admin port."""
        return [s.sockets[0].getsockname()[:2] for s in self._servers]

    async def reload(self) -> bool:
        """Load the file again and swap the table in; False (old table kept) when invalid."""
        assert self.proxy is not None
        try:
            # parsed and built in a thread: the event loop keeps serving on the old table
            config, table = await asyncio.to_thread(self._load_and_build)
        except ConfigError as error:
            self.reload_failures += 1
            log.error("reload refused, the previous configuration keeps serving: %s", error)
            return False
        self.proxy.table = table
        self.config = config
        self.reloads += 1
        self.proxy.metrics.reloads += 1
        if config.gc_freeze:
            _freeze_heap(config)
        log.info("configuration reloaded", extra={"routes": len(config.routes)})
        return True

    def _load_and_build(self) -> tuple[GatewayConfig, RouteTable]:
        config = load_config(self.path)
        if config.rate_limit_store != self._store_url:
            raise ConfigError(
                f"{self.path}: 'rate_limit_store' cannot change on reload; restart instead"
            )
        if config.discovery != self.config.discovery:
            raise ConfigError(f"{self.path}: 'discovery' cannot change on reload")
        return config, build_table(config, resolver=self._resolver, buckets=self._buckets)

    async def _admin(self, request: Request, conn: ServerConnection) -> None:
        path = request.target.partition("?")[0]
        if path == "/healthz":
            status, body, kind = 200, b'{"status":"ok"}', "application/json"
        elif path == "/readyz":
            ready = self.proxy is not None and not self.draining
            status = 200 if ready else 503
            body = b'{"status":"ready"}' if ready else b'{"status":"draining"}'
            kind = "application/json"
        elif path == "/metrics" and self.proxy is not None:
            status, kind = 200, "text/plain; version=0.0.4"
            body = self.proxy.metrics.render().encode()
        else:
            conn.respond_error(ProxyError("no_route", "not an admin path"), "admin")
            return
        conn.start(status, [("content-type", kind), ("content-length", str(len(body)))])
        conn.write(body)

    async def _watch(self) -> None:
        last = self.path.stat().st_mtime_ns
        while True:
            await asyncio.sleep(1.0)
            try:
                now = self.path.stat().st_mtime_ns
            except OSError:
                continue
            if now != last:
                last = now
                await self.reload()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; reload on SIGHUP (and on file changes with ``watch``)."""
        await self.start()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        watcher = loop.create_task(self._watch()) if self.watch else None
        try:
            await self._stopped.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.stop()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace`` seconds), close."""
        self.draining = True
        for server in self._servers[:1]:
            server.close()
        proxy = self.proxy
        if proxy is not None:
            deadline = asyncio.get_running_loop().time() + grace
            # polled: a counter on the request path is cheaper than an event per request
            while proxy.in_flight and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            proxy.pool.close()
        for server in self._servers[1:]:
            server.close()
        if self._resolver is not None:
            await self._resolver.aclose()
        if isinstance(self._buckets, RedisBuckets):
            await self._buckets.aclose()


def _event_loop_policy() -> None:
    """uvloop when installed: the same code, a faster loop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve_one(path: Path, worker: int, workers: int, watch: bool) -> None:
    _event_loop_policy()
    gateway = Gateway(path, worker=worker, workers=workers, watch=watch)
    asyncio.run(gateway.run())


def run(path: str | Path, *, workers: int | None = None, watch: bool = False) -> int:
    """Serve the gateway described by ``path``; ``workers`` overrides the file's value."""
    path = Path(path)
    config = load_config(path)
    count = workers or config.workers
    if count == 1:
        _serve_one(path, 0, 1, watch)
        return 0
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker: its own loop, tracing and metrics start after the fork
            code = 0
            try:
                _serve_one(path, index, count, watch)
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGHUP, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def main(argv: list[str] | None = None) -> int:
    """``python -m interlink.gateway --config gateway.yaml [--check] [--watch] [--workers N]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m interlink.gateway")
    parser.add_argument("--config", required=True, help="the gateway's YAML file")
    parser.add_argument("--check", action="store_true", help="validate the file and exit")
    parser.add_argument("--watch", action="store_true", help="reload when the file changes")
    parser.add_argument("--workers", type=int, default=None, help="worker processes")
    args = parser.parse_args(argv)
    return check_or_run(args.config, check=args.check, watch=args.watch, workers=args.workers)


def check_or_run(path: str, *, check: bool, watch: bool, workers: int | None) -> int:
    """Validate (and with ``check`` stop there) or serve; prints errors, returns the exit code."""
    try:
        config = load_config(path)
        build_table(config, resolver=_NoResolver(), buckets=MemoryBuckets())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if check:
        print(f"{path}: valid ({len(config.routes)} routes)")
        return 0
    logging.basicConfig(level=logging.INFO)
    return run(path, workers=workers, watch=watch)


class _NoResolver:
    """Stands in for discovery while only validating."""

    async def apick(self, service: str) -> Any:  # pragma: no cover - never called
        raise RuntimeError("validation only")
