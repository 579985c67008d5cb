"""One contract for every read-write registry, run against each backend's real server.

memory and sqlite need nothing; redis and nats use the machine's shared servers (unique service
names per test); etcd runs privately (see conftest.py).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _discovery_support import NATS_URL, REDIS_URL, Etcd, unique
from support import free_port, until

from interlink.discovery import NoInstancesError, Registry, Resolver, ServiceInstance
from interlink.discovery.registry import BaseRegistry

pytestmark = pytest.mark.anyio


def inst(service: str, n: int, port: int | None = None) -> ServiceInstance:
    return ServiceInstance(service, f"i{n}", "127.0.0.1", port or 9000 + n, metadata={"n": str(n)})


class RegistryContract:
    """What every read-write registry does; subclasses provide ``registry`` and ``ttl``."""

    ttl = 0.3  # short enough for fast expiry tests; etcd's floor is 1 s
    url = ""

    async def test_register_lookup_deregister(self, registry: Registry) -> None:
        """A registered instance is listed, with its metadata, until deregistered."""
        svc = unique()
        await registry.register(inst(svc, 1), ttl=30)
        await registry.register(inst(svc, 2), ttl=30)
        found = sorted(await registry.lookup(svc), key=lambda i: i.instance_id)
        assert found == [inst(svc, 1), inst(svc, 2)]
        assert found[0].metadata == {"n": "1"}
        await registry.deregister(inst(svc, 1))
        assert await registry.lookup(svc) == [inst(svc, 2)]
        assert await registry.lookup(unique()) == []

    async def test_duplicate_id_with_another_address_is_refused(self, registry: Registry) -> None:
        """Re-using a live instance id for a different address is a ValueError."""
        svc = unique()
        await registry.register(inst(svc, 1), ttl=30)
        with pytest.raises(
            ValueError, match=re.escape("is already registered at http://127.0.0.1:9001")
        ):
            await registry.register(inst(svc, 1, port=9999), ttl=30)
        lease = await registry.register(inst(svc, 1), ttl=30)  # same address: a renewal
        await lease.aclose()
        assert await registry.lookup(svc) == []

    async def test_bad_ttl_and_service_are_value_errors(self, registry: Registry) -> None:
        """A non-positive TTL and an empty service name are rejected with the field named."""
        with pytest.raises(ValueError, match="'ttl' must be a finite number > 0: 0"):
            await registry.register(inst(unique(), 1), ttl=0)
        with pytest.raises(ValueError, match="'service' must be a non-empty name"):
            await registry.lookup("")

    async def test_unrenewed_instance_expires_after_its_ttl(self, registry: Registry) -> None:
        """Without heartbeats an instance is gone once its TTL has passed."""
        svc = unique()
        lease = await registry.register(inst(svc, 1), ttl=self.ttl)
        await lease.stop()
        assert await registry.lookup(svc) == [inst(svc, 1)]
        await asyncio.sleep(self.ttl + self.expiry_slack)
        assert await registry.lookup(svc) == []

    async def test_lease_heartbeats_keep_the_instance_listed(self, registry: Registry) -> None:
        """A live lease renews by itself well past its TTL, and aclose deregisters."""
        svc = unique()
        lease = await registry.register(inst(svc, 1), ttl=self.ttl)
        await asyncio.sleep(self.ttl * 2.5)
        assert await registry.lookup(svc) == [inst(svc, 1)]
        assert lease.renewals >= 2
        await lease.aclose()
        assert await registry.lookup(svc) == []

    async def test_watch_delivers_changes_and_expiry(self, registry: Registry) -> None:
        """A watch yields the current snapshot, then each change, expiry included, promptly."""
        svc = unique()
        await registry.register(inst(svc, 1), ttl=30)
        seen: list[tuple[ServiceInstance, ...]] = []

        async def follow() -> None:
            async for snap in registry.watch(svc):
                seen.append(snap)

        task = asyncio.get_running_loop().create_task(follow())
        try:
            await until(lambda: seen == [(inst(svc, 1),)])
            lease = await registry.register(inst(svc, 2), ttl=self.ttl)
            took = await until(lambda: seen[-1] == (inst(svc, 1), inst(svc, 2)))
            assert took < 0.5
            await lease.stop()
            took = await until(lambda: seen[-1] == (inst(svc, 1),))
            assert took < self.ttl + self.expiry_slack
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def test_closing_the_registry_deregisters_its_instances(self) -> None:
        """aclose() on a registry object removes the instances it registered."""
        svc = unique()
        first = Registry.from_url(self.url)
        await first.register(inst(svc, 1), ttl=30)
        second = Registry.from_url(self.url)
        assert await second.lookup(svc) == [inst(svc, 1)]
        await first.aclose()
        assert await second.lookup(svc) == []
        await second.aclose()

    async def test_services_lists_registered_names(self, registry: Any) -> None:
        """services() names every service with an instance (what `interlink discovery list`
        shows without a name)."""
        svc = unique()
        await registry.register(inst(svc, 1), ttl=30)
        assert svc in await registry.services()

    expiry_slack = 0.3


class TestMemory(RegistryContract):
    url = "memory://contract"

    @pytest.fixture
    async def registry(self) -> AsyncIterator[BaseRegistry]:
        reg: Any = Registry.from_url(self.url)
        yield reg
        await reg.aclose()


class TestSqlite(RegistryContract):
    @pytest.fixture(autouse=True)
    def _url(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path}/registry.db"

    @pytest.fixture
    async def registry(self) -> AsyncIterator[BaseRegistry]:
        reg: Any = Registry.from_url(self.url, poll_interval=0.05)
        yield reg
        await reg.aclose()

    async def test_two_processes_share_the_file(self, tmp_path: Path) -> None:
        """An instance registered through one connection is seen through another file handle."""
        svc = unique()
        a, b = Registry.from_url(self.url), Registry.from_url(self.url)
        await a.register(inst(svc, 1), ttl=30)
        assert await b.lookup(svc) == [inst(svc, 1)]
        await a.aclose()
        await b.aclose()


# A server process registering one instance, heartbeating until it is killed.
_SERVER = """
import asyncio, sys
from interlink.discovery import Registry, ServiceInstance

async def main():
    url, service, iid, port = sys.argv[1:]
    registry = Registry.from_url(url)
    await registry.register(ServiceInstance(service, iid, "127.0.0.1", int(port)), ttl=0.5)
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


Spawn = Callable[[str, str, str], "subprocess.Popen[str]"]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start registering server processes; every one is killed at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(url: str, service: str, iid: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", _SERVER, url, service, iid, str(free_port())]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_sqlite_is_shared_by_processes(tmp_path: Path, spawn: Spawn) -> None:
    """Two server processes register in one file; a client process watches them come, and sees
    the one killed with SIGKILL leave once its TTL runs out."""
    url, svc = f"sqlite:///{tmp_path}/registry.db", unique()
    async with Resolver.from_url(url, registry_options={"poll_interval": 0.02}) as resolver:
        await resolver.prefetch(svc)
        first, second = spawn(url, svc, "p1"), spawn(url, svc, "p2")
        for proc in (first, second):
            assert proc.stdout is not None
            assert await asyncio.to_thread(proc.stdout.readline) == "registered\n"
        await until(lambda: {i.instance_id for i in resolver.instances(svc)} == {"p1", "p2"})
        await asyncio.sleep(1.0)  # two TTLs: both stay listed by their heartbeats
        assert {i.instance_id for i in resolver.instances(svc)} == {"p1", "p2"}
        first.kill()
        took = await until(lambda: {i.instance_id for i in resolver.instances(svc)} == {"p2"})
        assert took < 0.5 + 0.2


@pytest.mark.parametrize("scheme", ["redis", "nats", "etcd"])
async def test_an_unreachable_server_is_an_error_not_a_hang(scheme: str) -> None:
    """With nothing listening, lookup and register fail within seconds, and a resolver with
    nothing cached raises NoInstancesError 'unreachable' from the backend's error."""
    url = f"{scheme}://127.0.0.1:{free_port()}" + ("/0" if scheme == "redis" else "")
    registry = Registry.from_url(url)
    started = time.monotonic()
    with pytest.raises(Exception) as info:  # each client library has its own error types
        await asyncio.wait_for(registry.lookup("orders"), 5.0)
    assert not isinstance(info.value, TimeoutError)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(registry.register(inst("orders", 1)), 5.0)
    assert not isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 5.0
    await registry.aclose()
    async with Resolver.from_url(url) as resolver:
        with pytest.raises(NoInstancesError, match="could not be reached") as failed:
            await asyncio.wait_for(resolver.prefetch("orders"), 5.0)
        assert failed.value.__cause__ is not None


class TestRedis(RegistryContract):
    url = REDIS_URL

    @pytest.fixture
    async def registry(self) -> AsyncIterator[BaseRegistry]:
        reg: Any = Registry.from_url(self.url)
        yield reg
        await reg.aclose()


class TestNats(RegistryContract):
    url = NATS_URL

    @pytest.fixture
    async def registry(self) -> AsyncIterator[BaseRegistry]:
        reg: Any = Registry.from_url(self.url)
        yield reg
        await reg.aclose()


class TestEtcd(RegistryContract):
    ttl = 1.0
    expiry_slack = 0.8  # etcd checks for expired leases every 500 ms

    @pytest.fixture(autouse=True)
    def _url(self, etcd: Etcd) -> None:
        self.url = etcd.registry_url

    @pytest.fixture
    async def registry(self) -> AsyncIterator[BaseRegistry]:
        reg: Any = Registry.from_url(self.url)
        yield reg
        await reg.aclose()


def test_unknown_scheme_lists_the_known_ones() -> None:
    """from_url names the bad scheme and the known ones."""
    with pytest.raises(ValueError, match=r"unknown registry scheme 'consul' \(known: dns://"):
        Registry.from_url("consul://localhost:8500")
