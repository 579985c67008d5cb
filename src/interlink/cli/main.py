"""The ``interlink`` console script: global options, the ``demo`` command, and the command groups.

Adding a command group: write ``interlink/cli/<group>.py`` holding ``app = typer.Typer(help=...)``
and its commands, then register it below with ``app.add_typer(<group>.app, name="<group>")``.
Every command starts the process, so a group imports its heavy or optional dependencies
(brokers, stores, servers) inside the command functions, never at module level: ``interlink
--help`` must not need any extra installed.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from interlink._version import __version__
from interlink.cli import system as _system
from interlink.cli._logging import configure_logging

__all__ = ["LogFormat", "LogLevel", "app", "main"]

log = logging.getLogger("interlink.cli")


class LogFormat(StrEnum):
    """How log records are written to stderr."""

    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    """The least severe level of the ``interlink`` logger that is written."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


app = typer.Typer(
    name="interlink",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    # Locals in a traceback may hold credentials from a connection URL; never print them.
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["--help", "-h"]},
)


def _stdout() -> Console:
    # Built per use: a Console fixes its colour and width when created, and the streams may
    # have been swapped since import (tests, pipes).
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _logging_option(what: str, help: str) -> Any:
    """``--log-WHAT``, also read from ``INTERLINK_LOG_WHAT`` (how a supervisor hands it to every
    service it starts); any case, as people type level names either way."""
    return typer.Option(
        f"--log-{what}", envvar=f"INTERLINK_LOG_{what.upper()}", case_sensitive=False, help=help
    )


def _show_version(value: bool) -> None:
    if value:
        _stdout().print(f"interlink {__version__}", markup=False)
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    log_format: Annotated[
        LogFormat,
        _logging_option(
            "format",
            "Log records as readable text or as JSON lines (ts, level, logger, msg, extras).",
        ),
    ] = LogFormat.TEXT,
    log_level: Annotated[
        LogLevel, _logging_option("level", "Write log records of this level and above to stderr.")
    ] = LogLevel.WARNING,
) -> None:
    """Resilient service-to-service calls: circuit breakers, retries, deadlines, and more."""
    configure_logging(level=log_level.value, fmt=log_format.value)
    log.debug(
        "interlink cli started",
        extra={"version": __version__, "command": ctx.invoked_subcommand},
    )


@app.command()
def demo(  # noqa: PLR0917 - typer reads the options from the signature
    seed: Annotated[
        int, typer.Option("--seed", help="Seed for the simulated failures, for a repeatable run.")
    ] = 7,
    fast: Annotated[
        bool, typer.Option("--fast", help="Shorten every phase (for tests and quick looks).")
    ] = False,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="resilience (one pipeline against one flaky downstream, in one process), or "
            "a scenario of the system file (--list shows them).",
        ),
    ] = "resilience",
    system: Annotated[
        Path, typer.Option("--system", envvar="INTERLINK_SYSTEM", help="The system file (YAML).")
    ] = Path(_system.DEFAULT_SYSTEM),
    no_budget: Annotated[
        bool,
        typer.Option("--no-budget", help="retry-storm: turn the retry budget off, for contrast."),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the services' own log lines too.")
    ] = False,
    monolith: Annotated[
        bool, typer.Option("--monolith", help="Play it with every service in one process.")
    ] = False,
    list_scenarios: Annotated[
        bool,
        typer.Option("--list", help="List the scenarios of the system file, then stop."),
    ] = False,
) -> None:
    """A guided tour: the policies, or a scenario played on a system.

    ``--scenario resilience`` (the default) runs the policies against a flaky service in one
    process; any other scenario plays against the whole reference system (real processes on
    loopback, embedded defaults) and prints its before / during / after table.
    """
    if list_scenarios:
        _system.print_scenarios(system)
        return
    if scenario != "resilience":
        code = _system.run_scenario(
            scenario,
            system=system,
            fast=fast,
            no_budget=no_budget,
            verbose=verbose,
            monolith=monolith,
        )
        if code:
            raise typer.Exit(code)
        return
    try:
        # Imported on demand: the demo pulls in more than any other command needs.
        module = importlib.import_module("interlink.demo")
    except ImportError as exc:
        if getattr(exc, "name", None) == "interlink.demo":
            message = "the demo is not part of this installation of interlink"
        else:
            message = f"the demo could not be loaded: {exc}"
        _stderr().print(f"[bold red]error:[/] {message}")
        raise typer.Exit(1) from exc
    result = module.run(seed=seed, fast=fast)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        raise typer.Exit(result)


# Command groups, one module each under interlink/cli/, are registered here:
#   from interlink.cli import dlq
#   app.add_typer(dlq.app, name="dlq")

from interlink.cli import messaging as _messaging  # noqa: E402

app.add_typer(_messaging.dlq_app, name="dlq")
app.command("topics")(_messaging.topics)
app.command("asyncapi")(_messaging.asyncapi)
app.add_typer(importlib.import_module("interlink.cli.discovery").app, name="discovery")
app.add_typer(importlib.import_module("interlink.cli.saga").app, name="saga")
app.command("gateway")(importlib.import_module("interlink.cli.gateway").gateway)
app.command("dashboard")(importlib.import_module("interlink.dashboard.command").dashboard)
app.command("up")(_system.up)
app.add_typer(_system.chaos_app, name="chaos")


def main() -> None:
    """Entry point of the ``interlink`` console script."""
    app(prog_name="interlink")


if __name__ == "__main__":
    main()
