"""``interlink dashboard`` and ``python -m interlink.dashboard``: serve the live dashboard.

Every source can come from the environment a system's services already share
(``INTERLINK_TRACES``, ``INTERLINK_SAGA_STORE``, ``INTERLINK_BROKER``, ``INTERLINK_REGISTRY``),
so a supervisor can run the dashboard as one more process of the system.

The command lives with the dashboard and the CLI registers it, so the dashboard never reaches
up into the CLI. The server and its sources are imported inside the command (and the package
loads its app only when asked for it), so ``interlink --help`` needs none of Starlette, uvicorn
or the stores.
"""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from rich.console import Console

from interlink._url_options import REGISTRY

__all__ = ["dashboard"]


def _pairs(values: list[str]) -> dict[str, str]:
    found = {}
    for value in values:
        service, sep, url = value.partition("=")
        if not sep or not service or not url.startswith(("http://", "https://")):
            raise typer.BadParameter(
                f"'--metrics' takes SERVICE=http://host:port/metrics: {value!r}"
            )
        found[service] = url
    return found


def dashboard(  # noqa: PLR0917 - typer maps each option to a parameter
    traces: Annotated[
        str | None,
        typer.Option(
            "--traces", envvar="INTERLINK_TRACES", help="Trace store URL (sqlite:///...)."
        ),
    ] = None,
    sagas: Annotated[
        str | None,
        typer.Option(
            "--sagas",
            envvar="INTERLINK_SAGA_STORE",
            help="Saga store URL (sqlite:///..., postgresql://...).",
        ),
    ] = None,
    broker: Annotated[
        list[str] | None,
        typer.Option(
            "--broker",
            envvar="INTERLINK_BROKER",
            help="Broker URL whose queues to show (repeatable).",
        ),
    ] = None,
    registry: Annotated[str | None, REGISTRY] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics",
            help="SERVICE=URL of a /metrics endpoint to read breakers from (repeatable); "
            "instances registered with 'metrics' metadata are found without it.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; loopback unless you mean it.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", envvar="INTERLINK_DASHBOARD_PORT", min=0, max=65535, help="Port to bind."
        ),
    ] = 8050,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="INTERLINK_DASHBOARD_TOKEN",
            help="Token that state-changing buttons need (default: a new random one).",
        ),
    ] = None,
) -> None:
    """Serve the live dashboard: topology, breakers, traces, sagas and queues."""
    import uvicorn

    from interlink.dashboard import DashboardSources, create_app

    sources = DashboardSources(
        traces=traces,
        sagas=sagas,
        brokers=tuple(broker or ()),
        registry=registry,
        metrics=_pairs(metrics or []),
    )
    secret = token or secrets.token_urlsafe(24)
    try:
        app = create_app(sources, token=secret)
    except (ValueError, ImportError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    Console(highlight=False).print(
        f"dashboard: http://{shown}:{port}/?token={secret}", markup=False, soft_wrap=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
