"""``interlink gateway``: serve (or check) an API gateway configuration."""

from __future__ import annotations

from typing import Annotated

import typer


def gateway(
    config: Annotated[str, typer.Option("--config", "-c", help="The gateway's YAML file.")],
    check: Annotated[
        bool, typer.Option("--check", help="Validate the file (routes, keys, limits) and exit.")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Reload when the file changes (SIGHUP always does).")
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Worker processes sharing the port (SO_REUSEPORT)."),
    ] = None,
) -> None:
    """Serve the API gateway described by a YAML file: routes, auth, rate limits, REST to gRPC."""
    try:
        from interlink.gateway.app import check_or_run
    except ImportError as error:
        typer.echo(
            f"error: the gateway needs its extra: pip install 'interlink[gateway]' ({error})",
            err=True,
        )
        raise typer.Exit(1) from error
    code = check_or_run(config, check=check, watch=watch, workers=workers)
    if code:
        raise typer.Exit(code)
