"""What the command modules declare alike: how a command group behaves. (The options that
name a registry, broker or store by URL are ``interlink._url_options``, shared with the
dashboard's command.)"""

from __future__ import annotations

import typer

__all__ = ["group"]


def group(help: str) -> typer.Typer:
    """A command group; run without a command, it prints its help instead of failing."""
    return typer.Typer(help=help, no_args_is_help=True)
