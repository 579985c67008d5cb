"""Rate limits: exact bursts, headers, per-consumer keys, Redis shared by two gateway
processes under concurrent load, and Redis down (local, open, closed)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_process import GatewayProcess, free_port
from proxy_support import LoopThread, start_proxy
from redis.asyncio import Redis

from interlink.gateway import build_table, parse_config
from interlink.proxy import Limiter, LimitRule, MemoryBuckets, ProxyError, RedisBuckets
from interlink.testing import FakeClock

REDIS = "redis://127.0.0.1:6379/0"


def test_memory_bucket_refills_on_the_clock() -> None:
    """burst tokens at once, then one per 1/rate seconds."""
    clock = FakeClock()
    buckets = MemoryBuckets(clock=clock)
    rule = LimitRule(name="r", rate=2, burst=3)
    assert [buckets.take_now("k", rule).allowed for _ in range(4)] == [True, True, True, False]
    refused = buckets.take_now("k", rule)
    assert refused.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert buckets.take_now("k", rule).allowed
    assert not buckets.take_now("k", rule).allowed


def test_refusal_headers() -> None:
    """A refusal carries Retry-After and the RateLimit-* trio."""
    limiter = Limiter(MemoryBuckets(clock=FakeClock()))
    rule = LimitRule(name="r", rate=1, burst=1)
    headers = dict(asyncio.run(limiter.check((rule,), "route", "alice", "1.2.3.4")))
    assert headers["ratelimit-limit"] == "1"
    assert headers["ratelimit-remaining"] == "0"
    with pytest.raises(ProxyError) as refused:
        asyncio.run(limiter.check((rule,), "route", "alice", "1.2.3.4"))
    assert refused.value.status == 429
    assert dict(refused.value.headers)["retry-after"] == "1"
    # another consumer has a bucket of its own
    asyncio.run(limiter.check((rule,), "route", "bob", "1.2.3.4"))


@pytest.fixture(scope="module")
def limited(loop_thread: LoopThread, upstream: str) -> Iterator[str]:
    config = parse_config(
        f"""
listen: 127.0.0.1:0
routes:
  - name: limited
    match: {{path: /limited}}
    upstream: {upstream}
    rewrite: /
    rate_limits: [{{rate: 0.001, burst: 5, per: ip}}]
"""
    )
    _, server, port = loop_thread.run(start_proxy(build_table(config)))
    yield f"http://127.0.0.1:{port}"
    loop_thread.close_server(server)


def test_gateway_answers_429(limited: str) -> None:
    """Exactly the burst passes; then 429 rate_limited with Retry-After, as JSON."""
    with httpx.Client(base_url=limited, timeout=10) as client:
        statuses = [client.get("/limited").status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        refused = client.get("/limited")
    assert refused.json()["reason"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"


def test_redis_bucket_is_exact_and_atomic() -> None:
    """100 concurrent takes from a burst of 30 (no refill): exactly 30 pass."""

    async def go() -> int:
        # a generous timeout: on a loaded machine a decision past the default 0.25 s would be
        # taken by the local fallback, and this test is about Redis's own atomicity
        buckets = RedisBuckets(REDIS, prefix=f"test:{uuid.uuid4().hex}:", timeout=10)
        rule = LimitRule(name="r", rate=0.0001, burst=30)
        try:
            decisions = await asyncio.gather(*(buckets.take("k", rule) for _ in range(100)))
        finally:
            await buckets.aclose()
        return sum(d.allowed for d in decisions)

    assert asyncio.run(go()) == 30


async def slow_scripts(target_port: int, delay: float) -> tuple[asyncio.Server, int]:
    """A loopback relay to the Redis on ``target_port`` that forwards every request at once
    and holds the reply to a script call (``EVAL``/``EVALSHA``) for ``delay`` seconds: a
    store that does the work but answers late. Replies before the first script call (the
    connection's handshake, which the client awaits before sending anything else) pass at
    once, so a client that reconnects and sends the script again can. Replies are held by
    count of script calls sent, not per read: the kernel may join or split replies."""

    async def relay(client: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reader, upstream = await asyncio.open_connection("127.0.0.1", target_port)
        calls = {"sent": 0, "held": 0}  # script calls forwarded / whose reply was held

        async def requests() -> None:
            with contextlib.suppress(OSError):
                while data := await client.read(65536):
                    calls["sent"] += data.count(b"EVAL")
                    upstream.write(data)
                    await upstream.drain()
            upstream.close()

        async def replies() -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    if calls["sent"] > calls["held"]:
                        calls["held"] = calls["sent"]
                        await asyncio.sleep(delay)
                    writer.write(data)
                    await writer.drain()
            writer.close()

        await asyncio.gather(requests(), replies())

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_redis_decision_that_times_out_is_not_sent_again() -> None:
    """Redis answering later than ``timeout``: the decision fails once (the rule's
    ``on_store_down`` decides) and the script is not sent again, since a resent script
    would take a second token for one request."""

    async def go() -> tuple[int, int]:
        server, port = await slow_scripts(6379, delay=1.0)
        prefix = f"test:{uuid.uuid4().hex}:"
        buckets = RedisBuckets(f"redis://127.0.0.1:{port}/0", prefix=prefix, timeout=0.3)
        rule = LimitRule(name="r", rate=0.0001, burst=100, on_store_down="open")
        direct = Redis.from_url(REDIS)
        try:
            assert (await buckets.take("k", rule)).allowed  # "open": let through
            # every script sent has run by now (the relay forwards requests at once)
            await asyncio.sleep(1.5)
            tokens = await direct.hget(prefix + "k", "tokens")
            taken = 0 if tokens is None else round(100 - float(tokens))
            return buckets.failures, taken
        finally:
            await direct.delete(prefix + "k")
            await direct.aclose()
            await buckets.aclose()
            server.close()

    failures, taken = asyncio.run(go())
    assert failures == 1
    assert taken <= 1  # sent once (0 if the request itself was late on a busy machine)


@pytest.mark.parametrize(("mode", "expected"), [("local", 2), ("open", 5), ("closed", 0)])
def test_redis_down(mode: str, expected: int) -> None:
    """Redis unreachable: a local bucket, everything through, or 503 rate_limit_unavailable."""

    async def go() -> tuple[int, list[str]]:
        buckets = RedisBuckets(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
        rule = LimitRule(name="r", rate=0.0001, burst=2, on_store_down=mode)  # type: ignore[arg-type]
        allowed, reasons = 0, []
        for _ in range(5):
            try:
                allowed += (await buckets.take("k", rule)).allowed
            except ProxyError as error:
                reasons.append(error.reason)
        await buckets.aclose()
        return allowed, reasons

    allowed, reasons = asyncio.run(go())
    assert allowed == expected
    if mode == "closed":
        assert reasons == ["rate_limit_unavailable"] * 5


@pytest.mark.slow
def test_two_gateways_share_one_limit(tmp_path: Path, upstream: str) -> None:
    """Two gateway processes, one Redis, 160 concurrent requests: exactly the burst passes."""
    route = f"shared-{uuid.uuid4().hex[:12]}"
    gateways = []
    ports = []
    try:
        for index in range(2):
            port, admin = free_port(), free_port()
            config = tmp_path / f"gw{index}.yaml"
            config.write_text(
                f"""
listen: 127.0.0.1:{port}
admin: 127.0.0.1:{admin}
rate_limit_store: {REDIS}
rate_limit_timeout: 5  # a busy test machine must not turn a slow answer into "Redis is down"
routes:
  - name: {route}
    match: {{path: /shared}}
    upstream: {upstream}
    rewrite: /
    rate_limits: [{{rate: 0.001, burst: 50, per: route, on_store_down: closed}}]
"""
            )
            gateway = GatewayProcess(config)
            gateways.append(gateway)
            gateway.wait_ready(admin)
            ports.append(port)

        async def load() -> list[int]:
            async with httpx.AsyncClient(timeout=20) as client:
                calls = [client.get(f"http://127.0.0.1:{ports[i % 2]}/shared") for i in range(160)]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(load())
        assert statuses.count(200) == 50, Counter(statuses)
        assert statuses.count(429) == 110, Counter(statuses)
    finally:
        for gateway in gateways:
            gateway.stop()
