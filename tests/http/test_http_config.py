"""ServicePolicies validation and config loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlink.http import ServicePolicies, load_config
from interlink.http._policies import Downstream
from interlink.http.client import split_target


def test_defaults_are_pinned() -> None:
    """The defaults documented in docs/sync.md."""
    p = ServicePolicies()
    assert (p.timeout, p.attempt_timeout, p.retries) == (10.0, None, 2)
    assert (p.backoff, p.multiplier, p.max_backoff, p.jitter) == (0.025, 2.0, 0.25, "full")
    assert (p.budget_ratio, p.budget_min_per_second, p.budget_ttl) == (0.2, 10.0, 10.0)
    assert (p.failure_rate_threshold, p.minimum_calls, p.breaker_window, p.cooldown) == (
        0.5,
        20,
        10.0,
        5.0,
    )
    assert p.max_retry_after == 10.0
    assert p.stale_if_error is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "'timeout' must be"),
        ({"attempt_timeout": -1}, "'attempt_timeout' must be"),
        ({"retries": -1}, "'retries' must be"),
        ({"backoff": 1.0, "max_backoff": 0.5}, "'max_backoff' must be >= backoff \\(1.0\\): 0.5"),
        ({"multiplier": 0.5}, "'multiplier' must be a finite number >= 1: 0.5"),
        ({"jitter": "wild"}, "'jitter' must be one of"),
        ({"budget_ratio": -0.1}, "'budget_ratio' must be"),
        ({"breaker": "yes"}, "'breaker' must be true or false"),
        ({"failure_rate_threshold": 1.5}, "'failure_rate_threshold' must be"),
        ({"minimum_calls": 0}, "'minimum_calls' must be"),
        ({"max_queue": 3}, "'max_queue' needs 'max_concurrent'"),
        ({"burst": 3}, "'burst' needs 'rate'"),
        ({"stale_if_error": 0}, "'stale_if_error' must be"),
        ({"max_hedges": 0}, "'max_hedges' must be"),
    ],
)
def test_bad_values_name_the_field(options: dict[str, object], message: str) -> None:
    """Each bad value is refused with the field's name and the value."""
    with pytest.raises(ValueError, match=message):
        ServicePolicies(**options)  # type: ignore[arg-type]


def test_from_dict_refuses_unknown_keys() -> None:
    """A misspelt option is an error, not silently ignored."""
    with pytest.raises(ValueError, match="unknown service policy option"):
        ServicePolicies.from_dict({"retires": 5})


def test_load_config_from_json(tmp_path: Path) -> None:
    """Defaults apply to every service; service tables override them; url is kept apart."""
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "default": {"timeout": 2.0},
                "services": {"menu": {"url": "http://m:1", "retries": 4}, "pay": {}},
            }
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.default.timeout == 2.0
    assert config.services["menu"].retries == 4
    assert config.services["menu"].timeout == 2.0
    assert config.services["pay"] == config.default
    assert config.urls == {"menu": "http://m:1"}


def test_load_config_refuses_unknown_sections() -> None:
    """Only 'default' and 'services' are sections."""
    with pytest.raises(ValueError, match="unknown config section"):
        load_config({"servics": {}})


def test_service_builds_one_set_of_policies() -> None:
    """One breaker, one budget; the unsafe pipeline shares them without retry or hedge."""
    service = Downstream("menu", ServicePolicies(max_concurrent=4, rate=100, hedge_delay=0.1))
    kinds = [d["policy"] for d in service.pipeline.describe()]
    assert kinds == ["timeout", "retry", "hedge", "breaker", "rate_limiter", "bulkhead"]
    unsafe = [d["policy"] for d in service.unsafe_pipeline.describe()]
    assert unsafe == ["timeout", "breaker", "rate_limiter", "bulkhead"]
    assert service.unsafe_pipeline.policies[1] is service.breaker
    assert service.retry is not None
    assert service.retry.budget is service.budget
    assert "menu" in repr(service)


def test_everything_off_is_an_empty_pipeline() -> None:
    """With every policy off a call is just the attempt."""
    service = Downstream(
        "x", ServicePolicies(timeout=None, retries=0, breaker=False, budget_ratio=None)
    )
    assert service.pipeline.describe() == []
    assert service.unsafe_pipeline is service.pipeline


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("service://menu/a?b=1", ("menu", None, "/a?b=1")),
        ("http://h:1/a", ("h:1", "http://h:1", "/a")),
        ("HTTPS://h", ("h", "https://h", "/")),
        ("http://h:1?x=1", ("h:1", "http://h:1", "/?x=1")),
    ],
)
def test_split_target(url: str, expected: tuple[str, str | None, str]) -> None:
    """Targets split into service, origin and path."""
    assert split_target(url, None) == expected


def test_split_target_joins_relative_urls_and_refuses_bad_ones() -> None:
    """Relative URLs need a base; unknown schemes and empty hosts are refused."""
    assert split_target("a", "service://menu/") == ("menu", None, "/a")
    with pytest.raises(ValueError, match="scheme must be"):
        split_target("ftp://h/x", None)
    with pytest.raises(ValueError, match="names no host"):
        split_target("http:///x", None)
