"""A registry record nobody can read never takes a service offline, on every backend.

Bad records are written the way a stray script or an old writer would: directly, with
redis-py, sqlite3, etcd's own HTTP gateway and nats-py, next to a good instance registered the
normal way. The resolver must serve the good one, warn once (naming the key), and keep watching.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _discovery_support import NATS_URL, REDIS_URL, Etcd, unique
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import until

from interlink.discovery import NoInstancesError, Registry, Resolver, ServiceInstance
from interlink.discovery.backends._shared import instance_of

pytestmark = pytest.mark.anyio


def good(service: str, n: int = 1) -> ServiceInstance:
    return ServiceInstance(service, f"good-{n}", "127.0.0.1", 9000 + n)


class Writer:
    """Writes raw bytes as the stored record of ``(service, instance_id)``, bypassing interlink."""

    url = ""

    async def write(self, service: str, instance_id: str, value: bytes) -> None:
        raise NotImplementedError

    def key(self, service: str, instance_id: str) -> str:
        """How the warning names the record."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


class RedisWriter(Writer):
    url = REDIS_URL

    def __init__(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(REDIS_URL)

    async def write(self, service: str, instance_id: str, value: bytes) -> None:
        seconds, micros = await self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        await self.redis.zadd(f"interlink:discovery:{service}:exp", {instance_id: now_ms + 600_000})
        await self.redis.hset(f"interlink:discovery:{service}:data", instance_id, value)

    def key(self, service: str, instance_id: str) -> str:
        return f"interlink:discovery:{service}:data[{instance_id}]"

    async def close(self) -> None:
        await self.redis.aclose()


class SqliteWriter(Writer):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        Registry.from_url(self.url)  # creates the table

    async def write(self, service: str, instance_id: str, value: bytes) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute(
                "INSERT OR REPLACE INTO interlink_instances VALUES (?, ?, ?, ?)",
                (service, instance_id, value, time.time() + 600),
            )
        finally:
            db.close()

    def key(self, service: str, instance_id: str) -> str:
        return f"interlink_instances[{service}/{instance_id}]"


class EtcdWriter(Writer):
    def __init__(self, etcd: Etcd) -> None:
        import httpx

        self.url = etcd.registry_url
        self.http = httpx.AsyncClient(base_url=etcd.url)

    async def write(self, service: str, instance_id: str, value: bytes) -> None:
        key = f"/interlink/discovery/{service}/{instance_id}".encode()
        answer = await self.http.post(
            "/v3/kv/put",
            json={"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
        )
        answer.raise_for_status()

    def key(self, service: str, instance_id: str) -> str:
        return f"/interlink/discovery/{service}/{instance_id}"

    async def close(self) -> None:
        await self.http.aclose()


def _enc(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


class NatsWriter(Writer):
    """The NATS value wraps the instance: ``{"instance": ..., "expires_at": ...}``; ``write``
    stores raw bytes, ``wrapped`` bytes with a fresh expiry around them."""

    url = NATS_URL

    def __init__(self) -> None:
        self.nc: Any = None

    async def write(self, service: str, instance_id: str, value: bytes) -> None:
        import nats

        if self.nc is None:
            self.nc = await nats.connect(NATS_URL)
        kv = await self.nc.jetstream().key_value("interlink_discovery")
        await kv.put(f"{_enc(service)}.{_enc(instance_id)}", value)

    def key(self, service: str, instance_id: str) -> str:
        return f"interlink_discovery/{_enc(service)}.{_enc(instance_id)}"

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


def wrapped(writer: Writer, stored: bytes) -> bytes:
    """``stored`` as the instance part of a record on NATS (its envelope carries the expiry)."""
    if not isinstance(writer, NatsWriter):
        return stored
    try:
        inner = json.loads(stored)
    except ValueError:
        return stored
    return json.dumps({"instance": inner, "expires_at": time.time() + 600}).encode()


@pytest.fixture(params=["redis", "sqlite", "etcd", "nats"])
async def writer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Writer]:
    """A direct writer to each backend with bad-record handling."""
    made: Writer
    if request.param == "redis":
        made = RedisWriter()
    elif request.param == "sqlite":
        made = SqliteWriter(tmp_path / "registry.db")
    elif request.param == "etcd":
        made = EtcdWriter(request.getfixturevalue("etcd"))
    else:
        made = NatsWriter()
    yield made
    await made.close()


def bad_records(service: str) -> dict[str, bytes]:
    """One of each kind of unreadable record, by instance id."""
    entry = good(service, 7).to_dict()
    return {
        "not-json": b"not json",
        "binary": bytes(range(256)),
        "a-list": b"[1, 2, 3]",
        "missing-fields": json.dumps({"service": service}).encode(),
        "bad-port": json.dumps({**entry, "port": "abc"}).encode(),
        "port-out-of-range": json.dumps({**entry, "port": 70000}).encode(),
        "port-of-a-wrong-type": json.dumps({**entry, "port": [8080]}).encode(),
        "huge": b'{"blob": "' + b"x" * 1_000_000 + b'"}',
    }


async def test_unreadable_records_are_skipped_and_the_watch_goes_on(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of bad record next to a good instance: the resolver serves the good one, warns
    once per bad key, and still sees an instance registered afterwards."""
    svc = unique("bad")
    registry = Registry.from_url(writer.url)
    try:
        await registry.register(good(svc, 1), ttl=30)
        bad = bad_records(svc)
        for instance_id, value in bad.items():
            await writer.write(svc, instance_id, wrapped(writer, value))
        caplog.set_level(logging.WARNING, "interlink.discovery")
        async with Resolver.from_url(writer.url) as resolver:
            await resolver.prefetch(svc)
            assert resolver.instances(svc) == (good(svc, 1),)
            assert resolver.pick(svc).instance == good(svc, 1)
            await registry.register(good(svc, 2), ttl=30)
            await until(lambda: len(resolver.instances(svc)) == 2, within=5.0)
            assert resolver.stats().stale == frozenset()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for instance_id in bad:
            key = writer.key(svc, instance_id)
            naming = [w for w in warnings if key in w]
            assert len(naming) == 1, (key, warnings)  # once, however often it was read
            assert "skipping the unreadable registry record" in naming[0]
        assert not any("unreachable" in w for w in warnings)
    finally:
        await registry.aclose()


async def test_a_record_of_another_service_is_refused(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """A well-formed instance of 'payments' stored under this service's key is not served."""
    svc, other = unique("mine"), unique("other")
    registry = Registry.from_url(writer.url)
    try:
        await registry.register(good(svc, 1), ttl=30)
        stray = ServiceInstance(other, "stray", "127.0.0.1", 9999)
        await writer.write(svc, "stray", wrapped(writer, stray.to_json().encode()))
        caplog.set_level(logging.WARNING, "interlink.discovery")
        assert await registry.lookup(svc) == [good(svc, 1)]
        async with Resolver.from_url(writer.url) as resolver:
            await resolver.prefetch(svc)
            assert resolver.instances(svc) == (good(svc, 1),)
        assert any(
            writer.key(svc, "stray") in r.getMessage() and repr(other) in r.getMessage()
            for r in caplog.records
        )
    finally:
        await registry.aclose()


# ---------------------------------------------------------------- garbage, not an outage


async def test_a_redis_answering_garbage_is_unreadable_not_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keys of the wrong type (Redis answers WRONGTYPE): a first look-up fails as
    'unreadable', and a running watch logs garbage, never 'unreachable'."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    svc, other = unique("garbage"), unique("garbage")
    registry = Registry.from_url(REDIS_URL)
    try:
        await client.set(f"interlink:discovery:{svc}:exp", "not a sorted set")
        async with Resolver.from_url(REDIS_URL, retry_delay=0.05) as resolver:
            with pytest.raises(NoInstancesError, match="unreadable") as failed:
                await resolver.prefetch(svc)
            assert failed.value.reason == "unreadable"
            await registry.register(good(other, 1), ttl=30)
            await resolver.prefetch(other)
            caplog.set_level(logging.WARNING, "interlink.discovery")
            await client.delete(f"interlink:discovery:{other}:exp")
            await client.set(f"interlink:discovery:{other}:exp", "garbage")
            await client.publish(f"interlink:discovery:{other}:changes", "x")
            await until(lambda: resolver.stats().stale == {other}, within=5.0)
            assert resolver.instances(other) == (good(other, 1),)  # the last list is kept
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("unreadable" in m and repr(other) in m for m in messages), messages
        assert not any("unreachable" in m for m in messages), messages
    finally:
        await client.delete(f"interlink:discovery:{svc}:exp", f"interlink:discovery:{other}:exp")
        await client.aclose()
        await registry.aclose()


async def test_an_etcd_url_answering_garbage_is_unreadable_not_unreachable() -> None:
    """Something that is not etcd answers 200 with a body that is not JSON: 'unreadable'."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"<html>this is not etcd</html>"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with Resolver.from_url(f"etcd://127.0.0.1:{port}") as resolver:
            with pytest.raises(NoInstancesError) as failed:
                await resolver.prefetch("orders")
        assert failed.value.reason == "unreadable"
        assert "unreadable" in str(failed.value)
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- property tests

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def near_misses(service: str) -> st.SearchStrategy[Any]:
    """Instance-shaped objects with any field replaced by any JSON value, or left out."""
    fields = good(service, 5).to_dict()
    return st.dictionaries(st.sampled_from([*fields, "extra"]), JSON, max_size=len(fields) + 1).map(
        lambda changed: {**fields, **changed}
    ) | st.builds(
        lambda drop: {k: v for k, v in fields.items() if k not in drop},
        st.sets(st.sampled_from(list(fields))),
    )


def stored_values(service: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary JSON, and near-miss instances, as stored bytes."""

    def dump(value: Any) -> bytes:
        return json.dumps(value).encode()

    return st.binary(max_size=300) | JSON.map(dump) | near_misses(service).map(dump)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_decoding_never_raises(data: st.DataObject) -> None:
    """Whatever is stored, decoding gives an instance of this service or None."""
    value = data.draw(stored_values("orders") | JSON)
    found = instance_of("orders", "k", value)
    assert found is None or (isinstance(found, ServiceInstance) and found.service == "orders")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sqlite", "etcd", "nats"])
def test_any_stored_value_leaves_the_good_instances_served(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Arbitrary bytes and JSON values written next to a good instance: the resolver never
    raises and always serves the good instance."""
    etcd = request.getfixturevalue("etcd") if backend == "etcd" else None

    def make() -> Writer:
        if backend == "redis":
            return RedisWriter()
        if backend == "sqlite":
            return SqliteWriter(tmp_path / "property.db")
        if backend == "etcd":
            assert etcd is not None
            return EtcdWriter(etcd)
        return NatsWriter()

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.data())
    def check(data: st.DataObject) -> None:
        svc = unique("prop")
        values = data.draw(st.lists(stored_values(svc), min_size=1, max_size=3))

        async def run() -> None:
            writer = make()
            registry = Registry.from_url(writer.url)
            try:
                await registry.register(good(svc, 1), ttl=30)
                for n, value in enumerate(values):
                    await writer.write(svc, f"x{n}", wrapped(writer, value))
                async with Resolver.from_url(writer.url) as resolver:
                    await resolver.prefetch(svc)
                    served = resolver.instances(svc)
                    assert good(svc, 1) in served
                    assert all(i.service == svc for i in served)
                    assert resolver.pick(svc).instance.service == svc
            finally:
                await registry.aclose()
                await writer.close()

        asyncio.run(run())

    check()
