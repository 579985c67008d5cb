"""static: instances from the URL, a dict, or a watched JSON/TOML file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import until

from interlink.discovery import Registry, Resolver, ServiceInstance
from interlink.discovery.backends.static import StaticRegistry

pytestmark = pytest.mark.anyio


async def test_url_lists_services_inline() -> None:
    """static:?svc=h:p,h:p lists each address under its service, id host:port."""
    reg = Registry.from_url("static:?orders=127.0.0.1:8001,127.0.0.1:8002&pay=10.0.0.1:9000")
    orders = await reg.lookup("orders")
    assert [i.address for i in orders] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert orders[0].instance_id == "127.0.0.1:8001"
    assert [i.address for i in await reg.lookup("pay")] == ["10.0.0.1:9000"]
    assert await reg.lookup("other") == []


async def test_dict_entries_carry_zone_protocol_and_metadata() -> None:
    """Table entries set id, zone, protocol and metadata."""
    reg = StaticRegistry(
        {"orders": [{"host": "h", "port": 1, "id": "o1", "zone": "a", "protocol": "grpc"}]}
    )
    assert await reg.lookup("orders") == [ServiceInstance("orders", "o1", "h", 1, "grpc", zone="a")]


async def test_toml_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    """A resolver over a static file follows edits to it."""
    path = tmp_path / "services.toml"
    path.write_text('[services]\norders = ["127.0.0.1:8001"]\n')
    async with Resolver(StaticRegistry(path=path, interval=0.02)) as resolver:
        await resolver.prefetch("orders")
        path.write_text('[services]\norders = ["127.0.0.1:8001", "127.0.0.1:8002"]\n')
        os.utime(path, ns=(1, 2_000_000_000_000_000_000))  # a distinct mtime, whatever the fs
        await until(lambda: len(resolver.instances("orders")) == 2)


async def test_json_file(tmp_path: Path) -> None:
    """JSON files work the same, with the mapping at the top level."""
    path = tmp_path / "services.json"
    path.write_text('{"orders": [{"address": "127.0.0.1:8001"}]}')
    assert [i.port for i in await Registry.from_url(f"static://{path}").lookup("orders")] == [8001]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("static:", "must name a file or list services"),
        ("static:?orders=nohost", "a static instance must be 'host:port'"),
        ("static:?orders=h:0", r"'port' must be an integer in \[1, 65535\]: 0"),
    ],
)
def test_bad_static_input_is_a_value_error(url: str, message: str) -> None:
    """Malformed static lists fail with a clear ValueError."""
    with pytest.raises(ValueError, match=message):
        Registry.from_url(url)


async def test_static_registry_is_read_only() -> None:
    """Registering into a static list is refused."""
    with pytest.raises(NotImplementedError, match="read only"):
        await StaticRegistry({}).register(ServiceInstance("a", "1", "h", 1))
