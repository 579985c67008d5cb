"""Every SQLite URL in the package reads by one rule (SQLAlchemy's): ``sqlite:///rel.db`` is
relative to the working directory, ``sqlite:////abs.db`` absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlink._sqlite_thread import sqlite_path
from interlink.discovery import InvalidURLError, Registry, Resolver, ServiceInstance
from interlink.discovery.backends.sqlite import SqliteRegistry
from interlink.messaging.backends.sqlite import SqliteBackend
from interlink.tracing.store import TraceStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///rel.db", "rel.db"),
        ("sqlite:///./dir/rel.db", "./dir/rel.db"),
        ("sqlite:////abs/dir/x.db", "/abs/dir/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite:///dir/a%20b.db?poll=1", "dir/a b.db"),
    ],
)
def test_the_rule(url: str, path: str) -> None:
    """Three slashes, then the path: relative unless the path itself starts with a slash."""
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("sqlite://host/x.db", "no host"),
        ("sqlite://", "must name a file"),
        ("sqlite:///", "must name a file"),
        ("postgresql://h/db", "must start with sqlite:///"),
    ],
)
def test_a_bad_url_is_refused_naming_what_is_wrong(url: str, names: str) -> None:
    """An InvalidURLError (a ValueError) that says what is wrong and shows the URL."""
    with pytest.raises(InvalidURLError) as failed:
        sqlite_path(url)
    assert names in str(failed.value)
    assert url in str(failed.value)


def test_every_sqlite_store_registry_and_broker_reads_a_url_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry, the broker and the trace store name the same file for the same URL."""
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite:///same.db?poll=0.5", f"sqlite:///{tmp_path}/same.db"):
        expected = sqlite_path(url)
        registry = SqliteRegistry.from_url(url.replace("poll=", "poll_interval="))
        assert registry.path == expected
        assert SqliteBackend(url).path == expected
        assert TraceStore.from_url(url.split("?")[0]).path == expected


@pytest.mark.anyio
async def test_a_relative_registry_url_is_the_working_directory_s_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered through ``sqlite:///reg.db``, found through the file's absolute URL."""
    monkeypatch.chdir(tmp_path)
    relative = Registry.from_url("sqlite:///reg.db")
    try:
        await relative.register(ServiceInstance("orders", "o-1", "127.0.0.1", 8080), ttl=30)
        async with Resolver.from_url(f"sqlite:///{tmp_path}/reg.db") as resolver:
            picked = await resolver.apick("orders")
            assert picked.instance.instance_id == "o-1"
    finally:
        await relative.aclose()
    assert (tmp_path / "reg.db").exists()
