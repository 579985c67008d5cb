"""What the command modules declare alike: how a command group behaves, and the options more
than one command takes, each defined once so a flag reads the same variable and says the same
thing wherever it appears."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["REGISTRY", "group"]

REGISTRY: Any = typer.Option(
    "--registry",
    "-r",
    envvar="INTERLINK_REGISTRY",
    help="Registry URL: sqlite:///path, redis://, nats://, etcd://, dns://, static:?svc=h:p.",
)
"""The registry to read instances from, for ``Annotated[str, REGISTRY]`` (or ``str | None``)."""


def group(help: str) -> typer.Typer:
    """A command group; run without a command, it prints its help instead of failing."""
    return typer.Typer(help=help, no_args_is_help=True)
