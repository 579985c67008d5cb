"""Run the Python blocks of one documentation page: ``python tests/doc_runner.py PAGE``.

The blocks run in order, in one namespace and one event loop (top-level ``await`` allowed), as a
reader pasting them one after the other would; tracebacks name the page and its line. Names a
page leaves to the reader (a downstream ``menu`` service, a ``broker``, a database ``conn``)
are made here per page as real objects, and the host names a page shows (``menu.internal:8080``)
are rewritten to servers started here on loopback, so a block that calls a service really calls
one. Run from a scratch directory: blocks create files such as ``sagas.db`` where they stand.

An HTML comment on the line before a block changes how it runs:

``<!-- not-run: REASON -->``
    compiled, not run; for the rare block that cannot run here, saying why.
``<!-- run-until-stopped -->``
    the block ends by serving until stopped (``await broker.run()``): it runs for a second,
    then is cancelled; an error before that fails the page.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import re
import sqlite3
import sys
import textwrap
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not-run:\s*(?P<reason>\S.*?)|run-until-stopped)\s*-->")
UNTIL_STOPPED_FOR = 1.0
PAGE_TIMEOUT = 90.0


@dataclass(frozen=True)
class Block:
    """One fenced python block of a page."""

    page: str
    line: int  # of the block's first code line
    code: str
    not_run: str | None = None  # the reason, when the page marks the block not-run
    until_stopped: bool = False


def blocks_of(page: str, text: str) -> list[Block]:
    """The python blocks of ``text`` (dedented, for blocks inside list items) with markers."""
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip().rpartition("\n")[2]
        marker = MARKER.search(before)
        found.append(
            Block(
                page,
                text.count("\n", 0, match.start(2)) + 1,
                textwrap.dedent(match.group(2)),
                not_run=marker.group("reason") if marker and marker.group("reason") else None,
                until_stopped=bool(marker) and marker.group(1) == "run-until-stopped",
            )
        )
    return found


def compiled(block: Block, hosts: dict[str, str]) -> Any:
    """The block's code object, line numbers those of the page, hosts rewritten."""
    code = block.code
    for shown, real in hosts.items():
        code = code.replace(shown, real)
    padded = "\n" * (block.line - 1) + code
    return compile(padded, block.page, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run_blocks(blocks: list[Block], namespace: dict[str, Any], hosts: dict[str, str]) -> str:
    """Run ``blocks`` in order in ``namespace``; a one-line summary of what ran."""
    ran = skipped = 0
    for block in blocks:
        code = compiled(block, hosts)
        if block.not_run is not None:
            skipped += 1
            continue
        result = eval(code, namespace)  # our own documentation, nothing from outside
        if inspect.iscoroutine(result):
            if block.until_stopped:
                task = asyncio.ensure_future(result)
                await asyncio.wait({task}, timeout=UNTIL_STOPPED_FOR)
                if task.done():
                    task.result()  # it stopped by itself: an error is the page's failure
                else:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            else:
                await result
        ran += 1
        await run_tests_defined(code, namespace)
    return f"{ran} blocks ran, {skipped} compiled only"


async def run_tests_defined(code: Any, namespace: dict[str, Any]) -> None:
    """Call the ``test_*`` functions a block defines (a page showing how to test a handler)."""
    for name in code.co_names:
        test = namespace.get(name)
        if name.startswith("test_") and callable(test):
            result = test()
            if inspect.iscoroutine(result):
                await result


# --- what each page leaves to the reader ---------------------------------------------------------

Setup = Callable[[], contextlib.AbstractAsyncContextManager[tuple[dict[str, Any], dict[str, str]]]]
SETUPS: dict[str, Setup] = {}


def setup(page: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register an async context manager yielding ``(namespace, hosts)`` for ``page``."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        SETUPS[page] = contextlib.asynccontextmanager(function)
        return function

    return register


@contextlib.asynccontextmanager
async def nothing() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    yield {}, {}


def json_app() -> Any:
    """An ASGI app answering every request with JSON naming what it got (method, path, body)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def answer(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {"method": request.method, "path": request.url.path, "body": body.decode()}
        )

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", answer, methods=methods)])


@contextlib.contextmanager
def http_server() -> Any:
    sys.path.insert(0, str(TESTS / "http"))
    from http_support import serve

    with serve(json_app()) as base:
        yield base


async def _menu(restaurant_id: str) -> list[str]:
    await asyncio.sleep(0)
    return [f"margherita from {restaurant_id}"]


def _menu_sync(restaurant_id: str) -> list[str]:
    return [f"margherita from {restaurant_id}"]


@setup("README.md")
async def readme() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    yield {"fetch_menu": _menu, "restaurant_id": "r1"}, {}


@setup("docs/resilience.md")
async def resilience() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    names = {
        "fetch_menu": _menu_sync,
        "fetch_menu_async": _menu,
        "restaurant_id": "r1",
        "rid": "r1",
        "Menu": list,
    }
    yield names, {}


def _orders_db() -> sqlite3.Connection:
    conn = sqlite3.connect("orders.db")
    with conn:
        conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)")
        conn.execute("INSERT INTO orders VALUES ('o-1', 'new')")
    return conn


@setup("docs/consistency.md")
async def consistency() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    from pydantic import BaseModel

    from interlink import Retry
    from interlink.http import AsyncClient
    from interlink.messaging import Broker
    from interlink.saga import StepContext

    class OrderPaid(BaseModel):
        order_id: str

    class Order(BaseModel):
        id: str
        amount: int

    def local(name: str) -> Callable[[StepContext], dict[str, str]]:
        def step(ctx: StepContext) -> dict[str, str]:
            return {"step": name, "saga": ctx.saga_id}

        return step

    with http_server() as base:
        async with AsyncClient() as client:
            client.service("payments", url=base)
            names: dict[str, Any] = {
                "conn": _orders_db(),
                "order_id": "o-1",
                "OrderPaid": OrderPaid,
                "Order": Order,
                "order": Order(id="o-1", amount=1200),
                "broker": Broker.from_url("memory://"),
                "client": client,
                "courier_pipeline": Retry(1, backoff=0.01),
                **{
                    name: local(name)
                    for name in (
                        "create_order",
                        "cancel_order",
                        "refund_payment",
                        "assign_courier",
                        "release_courier",
                        "notify_customer",
                        "reserve",
                        "release",
                    )
                },
            }
            yield names, {}


@setup("docs/sync.md")
async def sync() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    from starlette.applications import Starlette

    sys.path.insert(0, str(TESTS / "grpc"))
    from grpc_helpers import Faulty, serving

    with http_server() as base, http_server() as orders:
        async with serving(Faulty()) as grpc_port:
            names = {"order": {"item": "pizza"}, "order_id": "o-1", "app": Starlette()}
            hosts = {
                "http://menu.internal:8080": base,
                "http://orders.internal:8080": orders,
                "menu.internal:50051": f"127.0.0.1:{grpc_port}",
            }
            yield names, hosts


@contextlib.contextmanager
def private_etcd() -> Any:
    """A private etcd on a free loopback port (scripts/ensure-etcd.sh installs it if missing)."""
    import os
    import shutil
    import signal
    import subprocess

    script = ROOT / "scripts" / "ensure-etcd.sh"
    done = subprocess.run(
        ["bash", str(script), "--start"], capture_output=True, text=True, timeout=330, check=True
    )
    pid, url, data = done.stdout.split()
    try:
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


@setup("docs/discovery.md")
async def discovery() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    import uuid

    import aiohttp
    import grpc.aio
    from starlette.applications import Starlette

    sys.path.insert(0, str(TESTS / "grpc"))
    from grpc_helpers import Faulty, add_servicer, food_pb2, food_pb2_grpc, serving
    from support import free_port

    from interlink.discovery import Registry, ServiceInstance

    suffix = uuid.uuid4().hex[:8]  # the shared Redis: names of this run only

    class KitchenStub:
        """The reader's own gRPC stub; here the example's menu service answers."""

        def __init__(self, channel: Any) -> None:
            self._menu = food_pb2_grpc.MenuServiceStub(channel)

        async def Prepare(self, order: Any) -> Any:
            return await self._menu.GetMenu(food_pb2.MenuRequest(restaurant_id=order))

    server = grpc.aio.server()
    add_servicer(Faulty(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    # sqlite:///./ is relative to the page's scratch directory; sqlite:///registry.db would be
    # /registry.db, one file for every run on the machine (a concurrent run's menu-1 collides).
    registry_url = "sqlite:///./registry.db"
    with http_server() as base, private_etcd() as etcd_url:
        http_port = int(base.rpartition(":")[2])
        async with serving(Faulty()) as kitchen_port, aiohttp.ClientSession() as http:
            registry = Registry.from_url(registry_url)
            menu = ServiceInstance("menu", "menu-1", "127.0.0.1", http_port)
            kitchen = ServiceInstance("kitchen", "kitchen-1", "127.0.0.1", kitchen_port, "grpc")
            async with (
                await registry.register(menu, ttl=30.0),
                await registry.register(kitchen, ttl=30.0),
            ):
                names = {
                    "http": http,
                    "REGISTRY": registry_url,
                    "KitchenStub": KitchenStub,
                    "order": "r1",
                    "starlette_app": Starlette(),
                    "instance": ServiceInstance(f"web-{suffix}", "web-1", "127.0.0.1", free_port()),
                    "server": server,
                    "grpc_instance": ServiceInstance(
                        f"grpc-{suffix}", "grpc-1", "127.0.0.1", grpc_port, "grpc"
                    ),
                }
                hosts = {
                    "sqlite:////var/run/interlink/registry.db": registry_url,
                    '"10.0.0.5", 8080': f'"127.0.0.1", {http_port}',
                    "etcd://10.0.0.2:2379": etcd_url.replace("http://", "etcd://"),
                }
                yield names, hosts
            await registry.aclose()


@setup("docs/messaging.md")
async def messaging() -> AsyncIterator[tuple[dict[str, Any], dict[str, str]]]:
    yield {}, {"postgresql://db/app": "postgresql://postgres@127.0.0.1:5432/test"}


def main(page: str) -> int:
    """Run ``page``'s blocks; print a summary, or the failing block's traceback."""
    text = (ROOT / page).read_text(encoding="utf-8")
    blocks = blocks_of(page, text)

    async def run() -> str:
        async with SETUPS.get(page, nothing)() as (namespace, hosts):
            return await asyncio.wait_for(run_blocks(blocks, namespace, hosts), PAGE_TIMEOUT)

    try:
        print(f"{page}: {asyncio.run(run())}")
    except NameError as exc:
        hint = (
            f"{page}: a block uses {exc.name!r}, which no earlier block defines: define it in "
            f"the block, or add a real stand-in to the page's setup in {Path(__file__).name}"
        )
        traceback.print_exc()
        print(hint, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
