"""``interlink discovery``: look at what a registry lists, once or as it changes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from interlink._url_options import REGISTRY
from interlink.cli._console import fail
from interlink.cli._options import group

if TYPE_CHECKING:
    from interlink.discovery import ServiceInstance

app = group("Service discovery: list and watch the instances a registry knows.")

RegistryOption = Annotated[str, REGISTRY]


def _table(title: str, instances: list[ServiceInstance]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("service", "instance", "address", "protocol", "zone", "metadata"):
        table.add_column(column)
    for i in sorted(instances, key=lambda x: (x.service, x.instance_id)):
        meta = ", ".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
        table.add_row(i.service, i.instance_id, i.address, i.protocol, i.zone or "", meta)
    return table


def _describe(exc: Exception, registry: str) -> str:
    """A one-line message: bad input as is; anything else (each client library raises its own
    connection errors) as the registry that failed and why."""
    if isinstance(exc, ValueError | ImportError):
        return str(exc)
    return f"registry {registry} failed: {type(exc).__name__}: {exc}"


@app.command("list")
def list_(
    service: Annotated[
        str | None, typer.Argument(help="The service to show (default: every service).")
    ] = None,
    registry: RegistryOption = "sqlite:///./.interlink/registry.db",
) -> None:
    """Show the live instances of SERVICE (or of every service) in a table."""
    from interlink.discovery import Registry

    async def run() -> list[ServiceInstance]:
        reg = Registry.from_url(registry)
        try:
            if service is not None:
                return await reg.lookup(service)
            names = getattr(reg, "services", None)
            if names is None:
                raise ValueError(f"{registry} cannot list its services: name one")
            found: list[ServiceInstance] = []
            for name in await names():
                found += await reg.lookup(name)
            return found
        finally:
            await reg.aclose()

    try:
        found = asyncio.run(run())
    except Exception as exc:
        raise fail(_describe(exc, registry)) from exc
    title = f"{service or 'all services'}: {len(found)} instance(s)"
    Console(highlight=False).print(_table(title, found))


@app.command()
def watch(
    service: Annotated[str, typer.Argument(help="The service to follow.")],
    registry: RegistryOption = "sqlite:///./.interlink/registry.db",
    count: Annotated[
        int, typer.Option("--count", "-n", help="Stop after this many snapshots (0: never).")
    ] = 0,
) -> None:
    """Print SERVICE's instances now and again after every change (Ctrl-C stops)."""
    from interlink.discovery import Registry

    console = Console(highlight=False)

    async def run() -> None:
        reg = Registry.from_url(registry)
        seen = 0
        try:
            async for snap in reg.watch(service):
                console.print(_table(f"{service}: {len(snap)} instance(s)", list(snap)))
                seen += 1
                if count and seen >= count:
                    return
        finally:
            await reg.aclose()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return
    except Exception as exc:
        raise fail(_describe(exc, registry)) from exc
