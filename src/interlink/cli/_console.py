"""How commands print: a console made per use (a ``Console`` fixes its colour and width when
created, and tests and pipes swap the streams), and the one way a command fails."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

__all__ = ["fail", "run_or_fail", "stdout"]

T = TypeVar("T")


def stdout() -> Console:
    """A console on stdout, without guessing highlights."""
    return Console(highlight=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; raise what this returns to exit with status 1."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def run_or_fail(main: Coroutine[Any, Any, T], errors: tuple[type[Exception], ...]) -> T:
    """Run ``main``; one of ``errors`` ends the command with its message."""
    try:
        return asyncio.run(main)
    except errors as exc:
        raise fail(str(exc)) from exc
