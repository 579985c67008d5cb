"""Resolver: a watched local cache, picking without I/O, ejection, and stale-while-error."""

from __future__ import annotations

import asyncio
import logging
from random import Random

import pytest
from _discovery_support import unique
from support import until

from interlink.discovery import (
    NoInstancesError,
    OutlierOptions,
    Resolver,
    ServiceInstance,
)
from interlink.discovery.backends.memory import MemoryRegistry
from interlink.errors import InterlinkError
from interlink.testing import FakeClock

pytestmark = pytest.mark.anyio


def inst(service: str, n: int, zone: str | None = None) -> ServiceInstance:
    return ServiceInstance(service, f"i{n}", "127.0.0.1", 9000 + n, zone=zone)


async def test_pick_of_an_unresolved_service_says_how_to_fix_it() -> None:
    """pick() never does I/O: an unknown service raises NoInstancesError naming apick/prefetch."""
    resolver = Resolver(MemoryRegistry())
    with pytest.raises(NoInstancesError, match=r"never resolved \(await resolver.apick"):
        resolver.pick("orders")
    assert issubclass(NoInstancesError, InterlinkError)


async def test_apick_fetches_then_pick_serves_from_the_cache() -> None:
    """The first apick fetches; later picks work even with the registry unreachable."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1))
    async with Resolver(registry) as resolver:
        picked = await resolver.apick(svc)
        assert picked.instance == inst(svc, 1)
        picked.done(True)
        registry.available = False
        assert resolver.pick(svc).instance == inst(svc, 1)
    registry.available = True
    await registry.aclose()


async def test_empty_service_raises_no_instances() -> None:
    """A resolved service with no instance raises NoInstancesError with reason 'empty'."""
    async with Resolver(MemoryRegistry()) as resolver:
        with pytest.raises(NoInstancesError, match="no instances of service 'x' are registered"):
            await resolver.apick("x")


async def test_prefetch_of_an_unreachable_registry_raises_with_the_cause() -> None:
    """With nothing cached and the registry down, prefetch raises 'unreachable' from its error."""
    registry = MemoryRegistry()
    registry.available = False
    async with Resolver(registry) as resolver:
        with pytest.raises(NoInstancesError, match="could not be reached") as info:
            await resolver.prefetch("orders")
        assert isinstance(info.value.__cause__, ConnectionError)
        assert resolver.stats().errors == 1


async def test_bad_service_name_is_a_value_error() -> None:
    """An empty service name is rejected before anything is fetched."""
    async with Resolver(MemoryRegistry()) as resolver:
        with pytest.raises(ValueError, match="'service' must be a non-empty name"):
            await resolver.prefetch("")


async def test_watch_brings_new_instances_and_drops_removed_ones() -> None:
    """Registrations and deregistrations reach the cache through the watch."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1))
    async with Resolver(registry) as resolver:
        await resolver.prefetch(svc)
        await registry.register(inst(svc, 2))
        await until(lambda: len(resolver.instances(svc)) == 2)
        await registry.deregister(inst(svc, 1))
        await until(lambda: resolver.instances(svc) == (inst(svc, 2),))
    await registry.aclose()


async def test_expired_instance_leaves_the_cache() -> None:
    """An instance whose lease stops renewing is gone once its TTL passes."""
    registry = MemoryRegistry()
    svc = unique()
    lease = await registry.register(inst(svc, 1), ttl=0.1)
    await registry.register(inst(svc, 2), ttl=10)
    async with Resolver(registry) as resolver:
        await resolver.prefetch(svc)
        await lease.stop()
        await until(lambda: resolver.instances(svc) == (inst(svc, 2),))
    await registry.aclose()


async def test_stale_while_error_keeps_the_last_instances_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registry outage keeps the cache, logs a warning and counts; recovery clears it."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry, retry_delay=0.01) as resolver:
        await resolver.prefetch(svc)
        with caplog.at_level(logging.WARNING, "interlink.discovery"):
            registry.available = False
            registry._store.notify(svc)  # wake the watch so it notices now
            await until(lambda: svc in resolver.stats().stale)
        assert resolver.stats().errors >= 1
        assert "serving 1 last known instance(s)" in caplog.text
        assert resolver.pick(svc).instance == inst(svc, 1)
        registry.available = True
        await until(lambda: not resolver.stats().stale)
        assert resolver.pick(svc).instance == inst(svc, 1)
    await registry.aclose()


async def test_empty_registry_right_after_an_outage_is_held_back() -> None:
    """A registry that comes back empty does not empty the cache within the grace period."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry, retry_delay=0.01, recover_grace=0.3) as resolver:
        await resolver.prefetch(svc)
        registry.available = False
        registry._store.notify(svc)
        await until(lambda: svc in resolver.stats().stale)
        registry._store.entries.clear()  # "restarted without its data"
        registry.available = True
        await until(lambda: not resolver.stats().stale)
        assert resolver.instances(svc) == (inst(svc, 1),)
        await registry.register(inst(svc, 1), ttl=60)  # the heartbeat refills it
        await asyncio.sleep(0.35)
        assert resolver.instances(svc) == (inst(svc, 1),)
    await registry.aclose()


async def test_held_back_empty_list_applies_after_the_grace_period() -> None:
    """If nobody re-registers, the empty list is applied when the grace period ends."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry, retry_delay=0.01, recover_grace=0.1) as resolver:
        await resolver.prefetch(svc)
        registry.available = False
        registry._store.notify(svc)
        await until(lambda: svc in resolver.stats().stale)
        registry._store.entries.clear()
        registry.available = True
        await until(lambda: resolver.instances(svc) == ())
    await registry.aclose()


async def test_failures_eject_and_the_instance_returns_after_the_backoff() -> None:
    """N failed calls eject an instance; it is picked again once its ejection time is over."""
    clock = FakeClock()
    registry = MemoryRegistry()
    svc = unique()
    for n in (1, 2, 3):
        await registry.register(inst(svc, n), ttl=60)
    options = OutlierOptions(consecutive_failures=2, base_ejection_time=5.0)
    async with Resolver(registry, balancer="round_robin", outlier=options, clock=clock) as resolver:
        await resolver.prefetch(svc)
        while True:
            picked = resolver.pick(svc)
            if picked.instance.instance_id == "i2":
                picked.done(False)
                if resolver.stats().ejections:
                    break
            else:
                picked.done(True)
        chosen = set()
        for _ in range(10):
            with resolver.pick(svc) as p:
                chosen.add(p.instance.instance_id)
        assert chosen == {"i1", "i3"}
        clock.advance(5.0)
        chosen = {resolver.pick(svc).instance.instance_id for _ in range(6)}
        assert chosen == {"i1", "i2", "i3"}
        assert resolver.stats().returns == 1
    await registry.aclose()


async def test_outlier_none_switches_ejection_off() -> None:
    """With outlier=None, failures never take an instance out."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    await registry.register(inst(svc, 2), ttl=60)
    async with Resolver(registry, outlier=None) as resolver:
        await resolver.prefetch(svc)
        for _ in range(50):
            resolver.pick(svc).done(False)
        assert resolver.stats().ejections == 0
    await registry.aclose()


async def test_done_twice_counts_once() -> None:
    """A second done() is ignored: in-flight counts never go negative."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry) as resolver:
        picked = await resolver.apick(svc)
        assert resolver.endpoints(svc)[0].outstanding == 1
        picked.done(True)
        picked.done(False)
        assert resolver.endpoints(svc)[0].outstanding == 0
    await registry.aclose()


async def test_p2c_steers_away_from_the_busy_instance() -> None:
    """Calls left in flight on one instance send new picks to the other."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    await registry.register(inst(svc, 2), ttl=60)
    async with Resolver(registry) as resolver:
        await resolver.prefetch(svc)
        held = [resolver.pick(svc) for _ in range(20)]
        busy = {p.instance.instance_id for p in held}
        assert busy == {"i1", "i2"}  # balanced while both fill up
        loads = sorted(e.outstanding for e in resolver.endpoints(svc))
        assert loads[1] - loads[0] <= 1
    await registry.aclose()


async def test_zone_preference_stays_local_while_it_can() -> None:
    """A resolver with a zone picks local instances, and all when none is local."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1, "a"), ttl=60)
    await registry.register(inst(svc, 2, "b"), ttl=60)
    async with Resolver(registry, zone="a") as resolver:
        await resolver.prefetch(svc)
        assert {resolver.pick(svc).instance.zone for _ in range(20)} == {"a"}
        await registry.deregister(inst(svc, 1, "a"))
        await until(lambda: len(resolver.instances(svc)) == 1)
        assert resolver.pick(svc).instance.zone == "b"
    await registry.aclose()


async def test_failing_health_check_takes_an_instance_out() -> None:
    """set_health(False) removes an instance from rotation; all failing is 'ejected'."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry) as resolver:
        await resolver.prefetch(svc)
        resolver.set_health(svc, "i1", False)
        with pytest.raises(NoInstancesError, match="all are ejected or failing"):
            resolver.pick(svc)
        resolver.set_health(svc, "i1", True)
        assert resolver.pick(svc).instance.instance_id == "i1"
    await registry.aclose()


async def test_from_url_owns_and_closes_its_registry() -> None:
    """Resolver.from_url builds the registry from a URL and closes it on aclose."""
    svc = unique()
    shared = MemoryRegistry("resolver-test")
    await shared.register(inst(svc, 1), ttl=60)
    async with Resolver.from_url("memory://resolver-test") as resolver:
        assert (await resolver.apick(svc)).instance == inst(svc, 1)
        assert resolver.services() == [svc]
    await shared.aclose()


async def test_concurrent_first_picks_share_one_lookup() -> None:
    """Many apicks of a new service at once trigger a single registry lookup."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    calls = 0
    original = registry.lookup

    async def counting(service: str) -> list[ServiceInstance]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return await original(service)

    registry.lookup = counting  # type: ignore[method-assign]
    async with Resolver(registry) as resolver:
        picks = await asyncio.gather(*(resolver.apick(svc) for _ in range(10)))
        assert {p.instance for p in picks} == {inst(svc, 1)}
    assert calls == 1
    await registry.aclose()


async def test_ejection_never_takes_more_than_the_allowed_share() -> None:
    """With every instance failing, at most max_ejection_percent of them are ejected at once."""
    registry = MemoryRegistry()
    svc = unique()
    for n in (1, 2, 3, 4):
        await registry.register(inst(svc, n), ttl=60)
    options = OutlierOptions(consecutive_failures=1, max_ejection_percent=0.5)
    async with Resolver(registry, balancer="round_robin", outlier=options) as resolver:
        await resolver.prefetch(svc)
        for _ in range(40):
            resolver.pick(svc).done(False)
        ejected = [e for e in resolver.endpoints(svc) if e.outlier.ejected]
        assert len(ejected) == 2
        assert resolver.stats().ejections == 2
    await registry.aclose()


async def test_repeat_ejections_of_one_instance_last_longer() -> None:
    """An instance that fails again right after returning is ejected for twice as long."""
    clock = FakeClock()
    registry = MemoryRegistry()
    svc = unique()
    for n in (1, 2, 3):
        await registry.register(inst(svc, n), ttl=60)
    options = OutlierOptions(consecutive_failures=1, base_ejection_time=5.0)
    async with Resolver(registry, outlier=options, clock=clock, rng=Random(7)) as resolver:
        await resolver.prefetch(svc)
        (second,) = [e for e in resolver.endpoints(svc) if e.instance.instance_id == "i2"]
        periods = []
        for _ in range(2):
            while second.outlier.ejected_until is None:
                picked = resolver.pick(svc)
                picked.done(picked.instance.instance_id != "i2")
            ejected_until = second.outlier.ejected_until
            assert ejected_until is not None
            periods.append(ejected_until - clock())
            clock.advance(periods[-1])
            resolver.pick(svc).done(True)  # the pick reviews ejections: i2 returns
        assert periods == [5.0, 10.0]
        assert resolver.stats().returns == 2
    await registry.aclose()


async def test_an_empty_list_after_recovery_is_believed_once_instances_were_listed() -> None:
    """The post-outage grace ends when the registry lists instances again: deregistering the
    last instance afterwards empties the cache at once."""
    registry = MemoryRegistry()
    svc = unique()
    await registry.register(inst(svc, 1), ttl=60)
    async with Resolver(registry, retry_delay=0.01, recover_grace=60.0) as resolver:
        await resolver.prefetch(svc)
        registry.available = False
        registry._store.notify(svc)
        await until(lambda: svc in resolver.stats().stale)
        registry.available = True
        await until(lambda: not resolver.stats().stale)  # came back with its data
        await registry.deregister(inst(svc, 1))
        await until(lambda: resolver.instances(svc) == (), within=1.0)
    await registry.aclose()
