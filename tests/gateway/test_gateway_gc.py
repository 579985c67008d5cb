"""The gateway freezes its long-lived heap after start and after each reload (``gc_freeze``)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from interlink.gateway import Gateway

CONFIG = """\
listen: 127.0.0.1:0
admin: null
{extra}
routes:
  - name: orders
    match: {{path: "/orders/{{id}}"}}
    upstream: http://127.0.0.1:9
"""


class _Cycle:
    me: _Cycle
    config: object


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """The test process must not keep what a gateway froze."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_start_freezes_and_reload_lets_the_old_table_go(tmp_path: Path) -> None:
    """After start the heap is frozen; a reload unfreezes first, so a replaced table held
    only by a reference cycle is still collected, then freezes the new one."""
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.format(extra=""))

    async def go() -> tuple[int, bool, int]:
        gateway = Gateway(path)
        await gateway.start()
        try:
            frozen = gc.get_freeze_count()
            assert gateway.proxy is not None
            # a frozen object that a reference cycle keeps alive once the config lets it go
            held = _Cycle()
            held.me = held
            held.config = gateway.config
            gateway.config.__dict__["held"] = held  # the object would be frozen at start
            gone = weakref.ref(held)
            del held
            gc.unfreeze()
            gc.freeze()
            assert await gateway.reload()  # a fresh config: the old one and its cycle go
            return frozen, gone() is None, gc.get_freeze_count()
        finally:
            await gateway.stop(grace=0)

    frozen, collected, refrozen = asyncio.run(go())
    assert frozen > 1000
    assert collected
    assert refrozen > 1000


def test_gc_freeze_false_leaves_the_collector_alone(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(CONFIG.format(extra="gc_freeze: false"))

    async def go() -> int:
        gateway = Gateway(path)
        await gateway.start()
        try:
            return gc.get_freeze_count()
        finally:
            await gateway.stop(grace=0)

    assert asyncio.run(go()) == 0
