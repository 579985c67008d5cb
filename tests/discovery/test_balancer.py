"""Balancers: round-robin, random, power of two choices, zone preference."""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.discovery import Endpoint, Pool, ServiceInstance
from interlink.discovery.balancer import (
    PowerOfTwo,
    RandomBalancer,
    RoundRobin,
    balancer_of,
    prefer_zone,
)


def endpoints(n: int, zones: list[str | None] | None = None) -> list[Endpoint]:
    zones = zones or [None] * n
    return [
        Endpoint(ServiceInstance("svc", f"i{k}", "h", 1000 + k, zone=zones[k])) for k in range(n)
    ]


def test_round_robin_cycles_through_every_endpoint() -> None:
    """Round-robin visits each endpoint once per cycle, in order."""
    pool = Pool(endpoints(3))
    chosen = [RoundRobin().choose(pool).instance.instance_id for _ in range(6)]
    assert chosen == ["i0", "i1", "i2", "i0", "i1", "i2"]


def test_random_spreads_over_all_endpoints() -> None:
    """The random balancer reaches every endpoint, driven by the injected rng."""
    pool = Pool(endpoints(3))
    balancer = RandomBalancer(Random(1))
    seen = Counter(balancer.choose(pool).instance.instance_id for _ in range(300))
    assert set(seen) == {"i0", "i1", "i2"}
    assert min(seen.values()) > 60


def test_p2c_prefers_the_endpoint_with_fewer_calls_in_flight() -> None:
    """With two endpoints, power of two choices always takes the less busy one."""
    eps = endpoints(2)
    eps[0].outstanding = 5
    pool = Pool(eps)
    balancer = PowerOfTwo(Random(2))
    assert {balancer.choose(pool).instance.instance_id for _ in range(50)} == {"i1"}


def test_p2c_with_one_endpoint_returns_it() -> None:
    """A pool of one needs no sampling."""
    pool = Pool(endpoints(1))
    assert PowerOfTwo().choose(pool) is pool.endpoints[0]


@given(st.lists(st.integers(0, 20), min_size=2, max_size=8), st.integers(0, 2**32))
def test_p2c_never_takes_the_busiest_when_strictly_busier(loads: list[int], seed: int) -> None:
    """Power of two choices never picks an endpoint busier than every other one."""
    eps = endpoints(len(loads))
    for e, load in zip(eps, loads, strict=True):
        e.outstanding = load
    chosen = PowerOfTwo(Random(seed)).choose(Pool(eps))
    others = [e.outstanding for e in eps if e is not chosen]
    assert chosen.outstanding <= max(others)


def test_balancer_of_names_and_errors() -> None:
    """Balancers are chosen by name; an unknown name lists the known ones."""
    assert isinstance(balancer_of(None), PowerOfTwo)
    assert isinstance(balancer_of("round_robin"), RoundRobin)
    assert isinstance(balancer_of("random"), RandomBalancer)
    with pytest.raises(ValueError, match="'balancer' must be a Balancer or one of 'round_robin'"):
        balancer_of("fastest")


def test_prefer_zone_keeps_local_endpoints_and_spills_over_when_none() -> None:
    """Zone preference keeps traffic local while the zone has endpoints, else uses all."""
    eps = endpoints(3, ["a", "b", "a"])
    assert [e.instance.instance_id for e in prefer_zone(eps, "a")] == ["i0", "i2"]
    assert len(prefer_zone(eps, "c")) == 3
    assert len(prefer_zone(eps, "b", min_local=2)) == 3
    assert len(prefer_zone(eps, None)) == 3


def test_p2c_steers_away_from_recent_failures_then_probes_again() -> None:
    """A failure penalty counts as calls in flight and wears down with each lost comparison."""
    eps = endpoints(2)
    eps[0].penalty = 4
    balancer = PowerOfTwo(Random(3))
    pool = Pool(eps)
    assert [balancer.choose(pool).instance.instance_id for _ in range(4)] == ["i1"] * 4
    assert eps[0].penalty == 0
    assert "i0" in {balancer.choose(pool).instance.instance_id for _ in range(20)}
