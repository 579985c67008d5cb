"""The command-line options that name a registry, broker or store by URL, each defined once
so a flag reads the same variable and says the same thing wherever it appears: in the CLI's
commands and in the dashboard's (``interlink.dashboard.command``), which the CLI registers."""

from __future__ import annotations

from typing import Any

import typer

__all__ = ["BROKER", "REGISTRY", "SAGA_STORE"]


def _url(flag: str, short: str, envvar: str, what: str, schemes: str) -> Any:
    # the same URL the services are given, so the same variable: a command run in a system's
    # environment needs no flag
    return typer.Option(flag, short, envvar=envvar, help=f"{what} URL: {schemes}.")


REGISTRY = _url(
    "--registry",
    "-r",
    "INTERLINK_REGISTRY",
    "Registry",
    "sqlite:///path, redis://, nats://, etcd://, dns://, static:?svc=h:p",
)
"""The registry to read instances from, for ``Annotated[str, REGISTRY]`` (or ``str | None``)."""
BROKER = _url(
    "--broker",
    "-b",
    "INTERLINK_BROKER",
    "Broker",
    "memory://, sqlite:///path, nats://, amqp://, redis://",
)
"""The broker to operate."""
SAGA_STORE = _url(
    "--store",
    "-s",
    "INTERLINK_SAGA_STORE",
    "Saga store",
    "sqlite:///path.db or postgresql://user@host/db",
)
"""The store the saga orchestrators keep their sagas in."""
