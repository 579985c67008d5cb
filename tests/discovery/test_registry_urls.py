"""A malformed registry URL fails at ``Registry.from_url``, naming the part that is wrong."""

from __future__ import annotations

import pytest

from interlink.discovery import InvalidURLError, Registry
from interlink.errors import InterlinkError


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("etcd://h:notaport", "the port 'notaport'"),
        ("etcd://h:70000", "the port '70000'"),
        ("nats://h:notaport", "the port 'notaport'"),
        ("nats://a:4222,b:99999", "the port '99999'"),
        ("redis://h:6379/abc", "the database 'abc'"),
        ("redis://h:notaport/0", "the port 'notaport'"),
        ("sqlite:///tmp/interlink-url-test.db?poll_interval=abc", "'poll_interval'"),
        ("sqlite:///tmp/interlink-url-test.db?poll_interval=-1", "'poll_interval'"),
        ("sqlite:///tmp/interlink-url-test.db?poll_interval=0", "'poll_interval'"),
        ("dns://127.0.0.1/?port=abc", "'port'"),
        ("dns://127.0.0.1/?interval=nan", "'interval'"),
        ("etcd://127.0.0.1:2379?timeout=-2", "'timeout'"),
        ("consul://h:8500", "unknown registry scheme 'consul'"),
    ],
)
def test_a_bad_url_fails_at_from_url_naming_the_part(url: str, names: str) -> None:
    """InvalidURLError, a ValueError and an InterlinkError, says which part and shows the URL."""
    with pytest.raises(InvalidURLError) as failed:
        Registry.from_url(url)
    assert names in str(failed.value)
    assert url in str(failed.value)
    assert isinstance(failed.value, ValueError)
    assert isinstance(failed.value, InterlinkError)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379",
        "nats://127.0.0.1:4222,127.0.0.1:4223",
        "etcd://[::1]:2379",
        "dns://127.0.0.1:53/?port=8080&mode=a&interval=0.5",
        "memory://named",
    ],
)
@pytest.mark.anyio
async def test_good_urls_still_open(url: str) -> None:
    """Well-formed URLs (several hosts, IPv6, query numbers) open as before."""
    registry = Registry.from_url(url)
    await registry.aclose()
