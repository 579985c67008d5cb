"""``interlink up`` runs a system of services; ``interlink chaos`` breaks one of them on purpose;
``interlink demo --scenario NAME`` plays a system's chaos scenario and prints its table.

A system is described by a YAML file (see ``interlink.supervisor``); its scenarios live in the
module the file names under ``scenarios:``, imported from the system's root folder.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from interlink.cli._console import fail
from interlink.cli._options import group

DEFAULT_SYSTEM = "examples/food_delivery/system.yaml"

SystemArgument = Annotated[Path, typer.Argument(help="The system file (YAML).", show_default=True)]
SystemOption = Annotated[
    Path,
    typer.Option("--system", "-s", envvar="INTERLINK_SYSTEM", help="The system file (YAML)."),
]
StateOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="INTERLINK_STATE_DIR",
        help="Where the system keeps its files (default: the file's state_dir).",
    ),
]

chaos_app = group("Break a running system: kill, stop, start a service; flip switches.")


def _load(system: Path, state_dir: Path | None) -> Any:
    from interlink.supervisor import SupervisorError, load_system

    try:
        return load_system(system, state_dir=state_dir)
    except SupervisorError as exc:
        raise fail(str(exc)) from None


def up(  # noqa: PLR0917 - typer maps each option to a parameter
    system: SystemArgument = Path(DEFAULT_SYSTEM),
    state_dir: StateOption = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="KEY=VALUE for every service (repeatable)."),
    ] = None,
    monolith: Annotated[
        bool,
        typer.Option(
            "--monolith",
            help="Every service in this one process (memory broker and registry, in-process "
            "gRPC), except those marked 'process: true'.",
        ),
    ] = False,
    dashboard: Annotated[
        bool,
        typer.Option(
            "--dashboard/--no-dashboard",
            help="Trace every service into the state directory and serve the live dashboard.",
        ),
    ] = True,
    dashboard_port: Annotated[
        int,
        typer.Option("--dashboard-port", min=0, max=65535, help="The dashboard's port (0: any)."),
    ] = 8050,
) -> None:
    """Run a system's services as processes on loopback (Ctrl-C stops).

    Prints the entry URL, a curl that places an order and the dashboard's URL; a service that
    crashes is restarted.
    """
    from interlink.supervisor import Monolith, Supervisor, install_signal_handlers

    spec = _load(system, state_dir)
    overrides = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--env must look like KEY=VALUE: {item!r}")
        overrides[key] = value
    if dashboard:
        # every service traces into one store the dashboard reads (services read the variable)
        overrides.setdefault("INTERLINK_TRACES", f"sqlite:///{spec.state_dir}/traces.db")
    console = Console(highlight=False)

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        runner = Monolith(spec, env=overrides) if monolith else Supervisor(spec, env=overrides)
        async with runner as supervisor:
            try:
                await supervisor.wait_healthy(90)
            except TimeoutError as exc:
                console.print(f"[bold red]error:[/] {exc}")
                return
            install_signal_handlers(stop)  # the services' own servers took the signals over
            entry = supervisor.entry_url
            how = "in one process" if monolith else "as processes"
            console.print(f"[bold green]{spec.name} is up[/] ({len(spec.services)} services {how})")
            if entry is not None:
                console.print(f"entry: {entry}")
                body = json.dumps(
                    {
                        "customer_id": "c1",
                        "restaurant_id": "luigis",
                        "items": [{"item_id": "margherita", "quantity": 1}],
                    }
                )
                token = _entry_token(spec, supervisor, console)
                auth = f"-H 'authorization: Bearer {token}' " if token else ""
                console.print(
                    f"try:   curl -s -X POST {entry} {auth}-H 'content-type: application/json' "
                    f"-d '{body}'",
                    soft_wrap=True,
                )
            board = None
            if dashboard and spec.entry_service is not None:
                board = await _start_dashboard(
                    supervisor.service_env(spec.entry_service), dashboard_port, console
                )
            console.print(
                f"chaos: interlink chaos down menu --system {system}   (Ctrl-C stops everything)"
            )
            await stop.wait()
            console.print("stopping...")
            if board is not None:
                board.should_exit = True

    asyncio.run(main())


def _entry_token(spec: Any, supervisor: Any, console: Console) -> str | None:
    """The bearer token the system file's ``entry.token`` mints (None without one); a token
    that cannot be minted is reported, and the system keeps running."""
    from interlink.supervisor import mint_entry_token

    try:
        return mint_entry_token(spec, supervisor.service_env(spec.entry_service))
    except Exception as exc:  # a user's function: whatever it raises is reported
        console.print(f"[yellow]entry.token {spec.entry_token} failed: {exc!r}[/]")
        return None


async def _start_dashboard(env: dict[str, str], port: int, console: Console) -> Any:
    """Serve the dashboard on the system's own stores (read from a service's environment) in
    this process; print its URL. Returns the server (``should_exit`` stops it)."""
    import secrets

    import uvicorn

    from interlink.dashboard import DashboardSources, create_app
    from interlink.discovery.serve import quiet_server

    sources = DashboardSources(
        traces=env.get("INTERLINK_TRACES") or None,
        sagas=env.get("INTERLINK_SAGA_STORE") or None,
        saga_table=env.get("INTERLINK_SAGA_TABLE", "interlink_sagas"),
        brokers=[env["INTERLINK_BROKER"]] if env.get("INTERLINK_BROKER") else [],
        registry=env.get("INTERLINK_REGISTRY") or None,
    )
    token = secrets.token_urlsafe(24)

    server = quiet_server(  # the supervisor owns the signals
        uvicorn.Config(
            create_app(sources, token=token), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        console.print(f"[yellow]dashboard did not start on port {port}[/]")
        return None
    bound = server.servers[0].sockets[0].getsockname()[1]
    console.print(f"dashboard: http://localhost:{bound}/?token={token}", soft_wrap=True)
    return server


@chaos_app.command("status")
def chaos_status(
    system: SystemOption = Path(DEFAULT_SYSTEM), state_dir: StateOption = None
) -> None:
    """Every service of the running system: pid, running, restarts, ports."""
    from interlink.supervisor import SupervisorError, control

    spec = _load(system, state_dir)
    try:
        reply = control(spec.state_dir, "status")
    except SupervisorError as exc:
        raise fail(str(exc)) from None
    Console(highlight=False).print_json(data=reply)


def _verb(verb: str, doc: str) -> None:
    def command(
        service: Annotated[str, typer.Argument(help="The service.")],
        system: SystemOption = Path(DEFAULT_SYSTEM),
        state_dir: StateOption = None,
    ) -> None:
        from interlink.supervisor import SupervisorError, control

        spec = _load(system, state_dir)
        try:
            reply = control(spec.state_dir, verb, service)
        except SupervisorError as exc:
            raise fail(str(exc)) from None
        if not reply.get("ok"):
            raise fail(str(reply.get("error")))
        Console(highlight=False).print(f"{verb} {service}: done")

    command.__doc__ = doc
    chaos_app.command(verb)(command)


_verb("kill", "SIGKILL the service, as a crash would; the supervisor restarts it.")
_verb("down", "SIGKILL the service and keep it down (until `interlink chaos start`).")
_verb("stop", "Stop the service cleanly (it deregisters and drains) and keep it down.")
_verb("start", "Start a stopped service again, on its ports.")
_verb("restart", "Stop the service cleanly, then start it.")


@chaos_app.command("set")
def chaos_set(
    service: Annotated[str, typer.Argument(help="The service whose switches to set.")],
    switches: Annotated[list[str], typer.Argument(help="NAME=NUMBER, e.g. fail=1.0 decline=0.3")],
    system: SystemOption = Path(DEFAULT_SYSTEM),
    state_dir: StateOption = None,
) -> None:
    """Flip a service's chaos switches (the services read them within 0.2 s)."""
    from interlink.supervisor import SupervisorError, set_switches

    spec = _load(system, state_dir)
    values: dict[str, float] = {}
    for item in switches:
        key, sep, value = item.partition("=")
        try:
            values[key] = float(value)
        except ValueError:
            raise fail(f"a switch must look like NAME=NUMBER: {item!r}") from None
        if not sep or not key:
            raise fail(f"a switch must look like NAME=NUMBER: {item!r}")
    try:
        set_switches(spec, service, values)
    except SupervisorError as exc:
        raise fail(str(exc)) from None
    Console(highlight=False).print(f"{service}: {values}")


def print_scenarios(system: Path) -> None:
    """Print the scenarios ``system`` offers, each with its one-line title."""
    try:
        module = scenarios_module(_load(system, None))
    except ImportError as exc:
        raise fail(f"the scenarios of {system} could not be loaded: {exc}") from None
    table = Table("scenario", "what happens", box=None, header_style="bold")
    table.add_row("resilience", "the policies against a flaky downstream, in one process")
    for name, scenario in sorted(getattr(module, "SCENARIOS", {}).items()):
        table.add_row(name, getattr(scenario, "title", ""))
    Console(highlight=False).print(table)


def scenarios_module(spec: Any) -> Any:
    """The system's scenarios module, imported from the system's root folder."""
    if not spec.scenarios:
        raise fail(f"{spec.source}: the system names no 'scenarios' module")
    root = str(spec.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module(spec.scenarios)


def run_scenario(
    name: str, *, system: Path, fast: bool, no_budget: bool, verbose: bool, monolith: bool = False
) -> int:
    """Play scenario ``name`` of ``system`` and print its table; 0 when every check held."""
    spec = _load(system, None)
    try:
        module = scenarios_module(spec)
    except ImportError as exc:
        raise fail(f"the scenarios of {system} could not be loaded: {exc}") from None
    known = getattr(module, "SCENARIOS", {})
    if name not in known:
        raise fail(f"no scenario {name!r} (known: resilience, {', '.join(sorted(known))})")
    console = Console(highlight=False, width=None if Console().is_terminal else 140)
    outcome = asyncio.run(
        module.run(
            name,
            fast=fast,
            no_budget=no_budget,
            monolith=monolith,
            console=console,
            logs=(lambda line: console.print(line, markup=False)) if verbose else None,
        )
    )
    return 0 if outcome.ok or no_budget else 1
