"""The registry protocol every backend implements, the self-renewing lease, and what every
backend shares: reading stored records defensively and checking its URL.

A registry answers three questions: who is there (``lookup``), what changed (``watch``), and
"I am here" (``register``, renewed by a lease until ``aclose``). ``Registry.from_url(url)``
chooses the backend by the URL's scheme, each in its own module under
``interlink.discovery.backends``, imported only when its URL is used:

==================================  ============================================================
``memory://[name]``                 one process (tests); the same name shares one registry
``sqlite:///file.db``               several processes on one machine, no server (the default)
``redis://host:6379/0``             sorted set + hash per service, expiry by server time
``nats://host:4222``                JetStream key-value bucket, watched
``etcd://host:2379``                v3 leases + watch, over etcd's HTTP/JSON gateway (httpx)
``dns://[server[:port]]/?...``      A/SRV records, e.g. a Kubernetes headless service (read only)
``static:///path.json`` or          a fixed list from a file or the URL itself (read only)
``static:?orders=h:p,h:p``
==================================  ============================================================

``watch`` yields whole snapshots (the sorted tuple of live instances), not deltas: a consumer
that missed a message can never drift, and replacing a cache is one assignment. Backend errors
are raised out of ``lookup`` and ``watch``; riding them out (stale-while-error) is the
resolver's job, which knows what it served last.

A stored record is anyone's to write, so backends read each one on its own and skip one that
cannot be read (``interlink.discovery.backends._shared``): it never hides the good records.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from interlink._closing import AsyncClosing
from interlink.discovery.instance import ServiceInstance, check_service
from interlink.errors import InvalidURLError

__all__ = [
    "DEFAULT_TTL",
    "BaseRegistry",
    "Lease",
    "Registry",
    "Snapshot",
    "snapshot_of",
    "snapshots",
]

log = logging.getLogger("interlink.discovery")

DEFAULT_TTL = 3.0
"""Seconds an instance stays listed without a heartbeat. Leases renew every third of it."""

Snapshot = tuple[ServiceInstance, ...]
"""All live instances of one service, sorted by ``instance_id``."""

_SCHEMES = {  # scheme -> (module under interlink.discovery.backends, class)
    "memory": ("memory", "MemoryRegistry"),
    "sqlite": ("sqlite", "SqliteRegistry"),
    "redis": ("redis", "RedisRegistry"),
    "rediss": ("redis", "RedisRegistry"),
    "nats": ("nats", "NatsRegistry"),
    "tls": ("nats", "NatsRegistry"),
    "etcd": ("etcd", "EtcdRegistry"),
    "etcds": ("etcd", "EtcdRegistry"),
    "dns": ("dns", "DnsRegistry"),
    "static": ("static", "StaticRegistry"),
}


def snapshot_of(instances: Any) -> Snapshot:
    """``instances`` as a snapshot: a tuple sorted by instance id."""
    return tuple(sorted(instances, key=lambda i: i.instance_id))


@runtime_checkable
class Registry(Protocol):
    """Where instances announce themselves and clients find them.

    ``Registry.from_url(url)`` opens the backend the URL's scheme names; each backend class
    also has its own ``from_url`` for its scheme.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Registry:
        """The registry for ``url``; ``options`` go to the backend (see the module docstring).

        Raises ``InvalidURLError`` (a ``ValueError``) naming the part of ``url`` that is wrong.
        """
        if not isinstance(url, str) or not url:
            raise InvalidURLError(
                f"'url' must be a registry URL such as 'sqlite:///registry.db': {url!r}"
            )
        scheme = urlsplit(url).scheme.lower()
        backend = _SCHEMES.get(scheme)
        if backend is None:
            known = ", ".join(sorted({f"{s}://" for s in _SCHEMES}))
            raise InvalidURLError(
                f"'url' has an unknown registry scheme {scheme!r} (known: {known}): {url!r}"
            )
        module = importlib.import_module(f"interlink.discovery.backends.{backend[0]}")
        registry: Registry = getattr(module, backend[1]).from_url(url, **options)
        return registry

    async def register(self, instance: ServiceInstance, ttl: float = DEFAULT_TTL) -> Lease:
        """List ``instance`` for ``ttl`` seconds, renewed by the returned lease until closed."""
        ...

    async def deregister(self, instance: ServiceInstance) -> None:
        """Remove ``instance`` now (missing is fine)."""
        ...

    async def lookup(self, service: str) -> list[ServiceInstance]:
        """The live instances of ``service``; raises when the backend cannot be reached."""
        ...

    def watch(self, service: str) -> AsyncIterator[Snapshot]:
        """The current snapshot of ``service`` at once, then a new one after every change."""
        ...

    async def aclose(self) -> None:
        """Close leases this registry object holds (deregistering them) and its connections."""
        ...


class Lease(AsyncClosing):
    """A registration that renews itself every ``ttl / 3`` until ``aclose()`` deregisters it.

    A failed renewal is logged and retried sooner; because every renewal rewrites the whole
    record, an instance re-appears by itself after the registry restarts empty. ``renewals``
    and ``failures`` count what happened, for tests and health endpoints.
    """

    def __init__(self, registry: BaseRegistry, instance: ServiceInstance, ttl: float, token: Any):
        self.instance = instance
        self.ttl = ttl
        self.interval = ttl / 3.0
        self.renewals = 0
        self.failures = 0
        self._registry = registry
        self._token = token
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"interlink-lease-{instance.service}-{instance.instance_id}"
        )

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` ran: the instance is no longer renewed."""
        return self._closed

    async def _run(self) -> None:
        delay = self.interval
        streak = 0
        while True:
            await asyncio.sleep(delay)
            try:
                self._token = await self._registry._refresh(self.instance, self.ttl, self._token)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                streak += 1
                # Retry well inside the TTL so one lost renewal does not drop the instance.
                delay = max(self.interval / 4.0, 0.05)
                # One warning per outage, not one per attempt.
                log.log(
                    logging.WARNING if streak == 1 else logging.DEBUG,
                    "discovery: renewing %s/%s failed (%s); retrying every %.2fs",
                    self.instance.service,
                    self.instance.instance_id,
                    exc,
                    delay,
                    extra={"service": self.instance.service, "error": repr(exc)},
                )
            else:
                self.renewals += 1
                if streak:
                    log.info(
                        "discovery: renewed %s/%s again after %d failed attempt(s)",
                        self.instance.service,
                        self.instance.instance_id,
                        streak,
                    )
                streak = 0
                delay = self.interval

    async def stop(self) -> None:
        """Stop renewing without deregistering (the entry then expires after its TTL)."""
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._registry._leases.discard(self)

    async def aclose(self) -> None:
        """Stop renewing and deregister the instance; idempotent."""
        if self._closed:
            return
        await self.stop()
        await self._registry._remove(self.instance, self._token)


class BaseRegistry(AsyncClosing):
    """The shared half of a read-write backend: validation, duplicate checks, leases.

    A backend supplies ``_get``, ``_put`` (upsert; also what a renewal does unless ``_refresh``
    is cheaper), ``_remove``, ``lookup`` and ``watch``.
    """

    def __init__(self) -> None:
        self._leases: set[Lease] = set()

    async def _get(self, service: str, instance_id: str) -> ServiceInstance | None:
        raise NotImplementedError

    async def _put(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        raise NotImplementedError

    async def _refresh(self, instance: ServiceInstance, ttl: float, token: Any) -> Any:
        return await self._put(instance, ttl, token)

    async def _remove(self, instance: ServiceInstance, token: Any) -> None:
        raise NotImplementedError

    async def register(self, instance: ServiceInstance, ttl: float = DEFAULT_TTL) -> Lease:
        """List ``instance`` and keep it listed; see ``Registry.register``.

        Raises ``ValueError`` when ``ttl`` is not a positive number or another live instance
        already holds ``instance_id`` at a different address (re-registering the same address
        is an idempotent renewal).
        """
        if not isinstance(instance, ServiceInstance):
            raise ValueError(f"'instance' must be a ServiceInstance: {instance!r}")
        if not isinstance(ttl, int | float) or not (ttl > 0 and math.isfinite(ttl)):
            raise ValueError(f"'ttl' must be a finite number > 0: {ttl!r}")
        existing = await self._get(instance.service, instance.instance_id)
        if existing is not None and not existing.same_address(instance):
            raise ValueError(
                f"instance '{instance.instance_id}' of service '{instance.service}' is already "
                f"registered at {existing.protocol}://{existing.address}; deregister it or use "
                f"another instance_id: {instance.protocol}://{instance.address}"
            )
        token = await self._put(instance, float(ttl), None)
        lease = Lease(self, instance, float(ttl), token)
        self._leases.add(lease)
        return lease

    async def deregister(self, instance: ServiceInstance) -> None:
        """Remove ``instance`` now, stopping this object's lease for it if there is one."""
        for lease in [x for x in self._leases if x.instance == instance]:
            await lease.stop()
        await self._remove(instance, None)

    async def lookup(self, service: str) -> list[ServiceInstance]:
        raise NotImplementedError

    def watch(self, service: str) -> AsyncIterator[Snapshot]:
        raise NotImplementedError

    async def probe(self) -> bool:
        """Whether the backend answers now, asked cheaply (a ping, not a listing): a resolver
        whose watch broke asks this while it waits, to resume as soon as the backend is back."""
        return True

    async def _close_leases(self) -> None:
        for lease in list(self._leases):
            try:
                await lease.aclose()
            except Exception as exc:  # the backend may already be gone; the TTL cleans up
                log.warning("discovery: deregistering %s failed: %s", lease.instance.address, exc)

    async def aclose(self) -> None:
        """Deregister every instance this object registered, then release connections."""
        await self._close_leases()


async def snapshots(
    fetch: Callable[[], Awaitable[tuple[Snapshot, float | None]]],
    wait: Callable[[float], Awaitable[object]],
    *,
    interval: float,
) -> AsyncIterator[Snapshot]:
    """The watch loop of a backend: yield ``fetch()``'s snapshot whenever it differs.

    ``fetch`` returns the snapshot and the seconds until the next entry expires (None: none
    does); ``wait(timeout)`` returns on a change notification or after ``timeout``. Between
    notifications the loop re-reads at the next expiry and at least every ``interval``.
    """
    last: Snapshot | None = None
    while True:
        snap, expires_in = await fetch()
        if snap != last:
            last = snap
            yield snap
        timeout = interval if expires_in is None else min(interval, max(expires_in, 0.0) + 0.005)
        await wait(timeout)


async def polled(
    lookup: Callable[[str], Awaitable[list[ServiceInstance]]], service: str, interval: float
) -> AsyncIterator[Snapshot]:
    """The watch of a backend that cannot notify: ``lookup(service)`` now and every
    ``interval``, yielded whenever the answer differs."""
    check_service(service)

    async def fetch() -> tuple[Snapshot, float | None]:
        return snapshot_of(await lookup(service)), None

    async for snap in snapshots(fetch, asyncio.sleep, interval=interval):
        yield snap
