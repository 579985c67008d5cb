"""``interlink up``: run a system of services as real processes on loopback, and break them on
command.

A system file (YAML) names the services, the command that starts each, the ports it needs and
the environment they share::

    name: food-delivery
    root: ../..                      # working directory of every service (relative to the file)
    state_dir: .interlink/food-delivery
    entry: {service: order, port: http, path: /orders}
    # entry.token (optional): "module:function" minting a bearer token for the entry from the
    # entry service's environment, for the curl `interlink up` prints and for load generators
    env:                             # shared; a variable set in the environment wins
      INTERLINK_BROKER: sqlite:///{state}/broker.db
    services:
      order:
        module: examples.food_delivery.order     # or command: [...]
        ports: {http: FOOD_ORDER_PORT}            # a free port each, in these variables
        health: {port: http, path: /healthz}

Why a small asyncio supervisor rather than circus, honcho or supervisord: chaos scenarios
must kill (SIGKILL), stop and start *one* service on command while the rest keep running and
keep their ports, and a scenario runs the supervisor inside its own event loop to time the
outage against its load. honcho runs a Procfile but has no control channel and stops
everything when one process dies; supervisord and circus can control single processes, but
each is a daemon with its own configuration format and RPC (XML-RPC, ZeroMQ) to drive from
asyncio, for what here is about 300 lines: spawn, prefix the output, restart on crash with
backoff, and a line protocol on a loopback socket (``interlink chaos ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from interlink._closing import AsyncStarting
from interlink.errors import InterlinkError

__all__ = [
    "Monolith",
    "ServiceSpec",
    "Supervisor",
    "SupervisorError",
    "SystemSpec",
    "control",
    "load_system",
    "mint_entry_token",
    "set_switches",
]

#: How long a stopped service gets to leave (deregister, drain) before it is killed.
STOP_GRACE = 5.0
#: Backoff between restarts of a service that keeps crashing.
RESTART_BACKOFF = (0.2, 5.0)

#: What ``command`` (and ``interlink chaos``) can do to one service.
VERBS = ("kill", "down", "stop", "start", "restart")

_COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")


class SupervisorError(InterlinkError):
    """A system file that does not describe a system, or a command a supervisor refused."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service of a system: how to start it and what it needs."""

    name: str
    command: tuple[str, ...]
    ports: Mapping[str, str] = field(default_factory=dict)  # port name -> env variable
    env: Mapping[str, str] = field(default_factory=dict)
    health_port: str | None = None
    health_path: str = "/healthz"
    #: In a monolith, run this service as a process of its own anyway (moved out).
    process: bool = False

    @property
    def module(self) -> str | None:
        """The module run with ``python -m`` (what a monolith imports), if that is the command."""
        if len(self.command) == 3 and self.command[:2] == ("{python}", "-m"):
            return self.command[2]
        return None


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """A whole system, as loaded from its file."""

    name: str
    root: Path
    state_dir: Path
    env: Mapping[str, str]
    services: Mapping[str, ServiceSpec]
    entry_service: str | None = None
    entry_port: str = "http"
    entry_path: str = "/"
    scenarios: str | None = None
    source: Path | None = None
    #: Variables for ``--monolith`` when every service runs in one process (memory broker...).
    monolith_env: Mapping[str, str] = field(default_factory=dict)
    #: ``module:function`` that mints a bearer token for the entry (``entry.token``).
    entry_token: str | None = None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SupervisorError(f"{where} must be a mapping: {value!r}")
    return value


def load_system(path: str | Path, *, state_dir: str | Path | None = None) -> SystemSpec:
    """Read a system file; errors name the file and the field."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("system files need PyYAML: pip install 'interlink[system]'") from exc
    file = Path(path).resolve()
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise SupervisorError(f"{path}: cannot read the system file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SupervisorError(f"{path}: not valid YAML: {exc}") from exc
    top = _mapping(data, f"{path}")
    root = (file.parent / str(top.get("root", "."))).resolve()
    name = str(top.get("name") or file.stem)
    state = Path(state_dir or os.environ.get("INTERLINK_STATE_DIR") or "")
    if not str(state) or str(state) == ".":
        state = root / str(top.get("state_dir", f".interlink/{name}"))
    services: dict[str, ServiceSpec] = {}
    raw_services = _mapping(top.get("services"), f"{path}: 'services'")
    if not raw_services:
        raise SupervisorError(f"{path}: 'services' must name at least one service")
    for sname, raw in raw_services.items():
        spec = _mapping(raw, f"{path}: services.{sname}")
        unknown = set(spec) - {"module", "command", "ports", "env", "health", "process"}
        if unknown:
            raise SupervisorError(f"{path}: services.{sname}: unknown keys {sorted(unknown)}")
        if "module" in spec:
            command: tuple[str, ...] = ("{python}", "-m", str(spec["module"]))
        elif "command" in spec and isinstance(spec["command"], list):
            command = tuple(str(c) for c in spec["command"])
        else:
            raise SupervisorError(f"{path}: services.{sname} needs 'module' or a 'command' list")
        health = _mapping(spec.get("health"), f"{path}: services.{sname}.health")
        ports = {str(k): str(v) for k, v in _mapping(spec.get("ports"), "ports").items()}
        health_port = health.get("port")
        if health_port is not None and health_port not in ports:
            raise SupervisorError(
                f"{path}: services.{sname}.health.port must be one of {sorted(ports)}: "
                f"{health_port!r}"
            )
        services[str(sname)] = ServiceSpec(
            name=str(sname),
            command=command,
            ports=ports,
            env={str(k): str(v) for k, v in _mapping(spec.get("env"), "env").items()},
            health_port=None if health_port is None else str(health_port),
            health_path=str(health.get("path", "/healthz")),
            process=bool(spec.get("process", False)),
        )
    monolith = _mapping(top.get("monolith"), f"{path}: 'monolith'")
    unknown = set(monolith) - {"env"}
    if unknown:
        raise SupervisorError(f"{path}: monolith: unknown keys {sorted(unknown)}")
    entry = _mapping(top.get("entry"), f"{path}: 'entry'")
    entry_service = entry.get("service")
    if entry_service is not None and entry_service not in services:
        raise SupervisorError(f"{path}: entry.service must name a service: {entry_service!r}")
    token = entry.get("token")
    if token is not None and not re.fullmatch(r"[\w.]+:\w+", str(token)):
        raise SupervisorError(f"{path}: entry.token must be 'module:function': {token!r}")
    return SystemSpec(
        name=name,
        root=root,
        state_dir=state.resolve(),
        env={str(k): str(v) for k, v in _mapping(top.get("env"), "env").items()},
        services=services,
        entry_service=entry_service,
        entry_port=str(entry.get("port", "http")),
        entry_path=str(entry.get("path", "/")),
        scenarios=top.get("scenarios"),
        source=file,
        monolith_env={
            str(k): str(v) for k, v in _mapping(monolith.get("env"), "monolith.env").items()
        },
        entry_token=None if token is None else str(token),
    )


def mint_entry_token(system: SystemSpec, env: Mapping[str, str]) -> str | None:
    """A bearer token for ``system``'s entry: ``entry.token``'s function (imported from the
    system's root folder) called with ``env``, the entry service's variables. None when the
    entry takes no token."""
    if system.entry_token is None:
        return None
    import importlib

    module, _, name = system.entry_token.partition(":")
    root = str(system.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    mint = getattr(importlib.import_module(module), name)
    return str(mint(env))


async def _wait_healthy(pending: dict[str, str], within: float) -> None:
    import urllib.request

    def ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(200 <= response.status < 300)
        except OSError:
            return False

    deadline_at = time.monotonic() + within
    while pending:
        for name, url in list(pending.items()):
            if await asyncio.to_thread(ok, url):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline_at:
            raise TimeoutError(f"not healthy after {within:.0f} s: {sorted(pending)}")
        await asyncio.sleep(0.1)


def _entry_url(system: SystemSpec, url: Callable[[str, str], str]) -> str | None:
    if system.entry_service is None:
        return None
    return url(system.entry_service, system.entry_port) + system.entry_path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Child:
    """One supervised service: its process, its ports, whether it should be running."""

    def __init__(self, spec: ServiceSpec, ports: dict[str, int], color: str) -> None:
        self.spec = spec
        self.ports = ports
        self.color = color
        self.process: asyncio.subprocess.Process | None = None
        self.wanted = True
        self.restarts = 0
        self.started_at = 0.0
        self.pumps: list[asyncio.Task[None]] = []
        self.watcher: asyncio.Task[None] | None = None


class Supervisor(AsyncStarting):
    """Runs every service of ``system`` as a child process; restarts one that crashes; takes
    commands (``kill``, ``stop``, ``start``, ``restart``, ``status``) in-process or over a
    loopback socket whose port is written to ``<state_dir>/supervisor.json``.

    ``output`` receives every line the services print, already prefixed with their name
    (default: this process's stdout). ``env`` overrides the system's variables.
    """

    def __init__(
        self,
        system: SystemSpec,
        *,
        env: Mapping[str, str] | None = None,
        output: Callable[[str], None] | None = None,
        color: bool | None = None,
    ) -> None:
        self.system = system
        self._overrides = dict(env or {})
        self._output = output or (lambda line: print(line, flush=True))
        self._color = sys.stdout.isatty() if color is None else color
        self._children: dict[str, _Child] = {}
        self._server: asyncio.Server | None = None
        self.control_port = 0
        width = max(len(n) for n in system.services)
        self._width = width

    # -- life cycle -----------------------------------------------------------------------------

    def environment(self, spec: ServiceSpec, ports: Mapping[str, int]) -> dict[str, str]:
        """The variables ``spec``'s process gets: the system's, the service's, its ports; a
        variable already set in this process's environment wins over the file's value."""
        fill = {
            "state": str(self.system.state_dir),
            "root": str(self.system.root),
            "python": sys.executable,
        }
        env = dict(os.environ)
        declared = {**self.system.env, **spec.env}
        for key, value in declared.items():
            env[key] = os.environ.get(key, value.format(**fill))
        env.update(self._overrides)
        for pname, var in spec.ports.items():
            env[var] = str(ports[pname])
        root = str(self.system.root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def service_env(self, service: str) -> dict[str, str]:
        """The variables the process of ``service`` runs with (its ports included)."""
        child = self._child(service)
        return self.environment(child.spec, child.ports)

    def url(self, service: str, port: str = "http") -> str:
        """``http://127.0.0.1:<port>`` of a service's named port."""
        return f"http://127.0.0.1:{self._children[service].ports[port]}"

    @property
    def entry_url(self) -> str | None:
        """The system's entry point (the URL a user sends requests to)."""
        return _entry_url(self.system, self.url)

    async def start(self) -> None:
        """Allocate ports, start every service and the control socket."""
        self.system.state_dir.mkdir(parents=True, exist_ok=True)
        for n, (name, spec) in enumerate(self.system.services.items()):
            ports = {p: _free_port() for p in spec.ports}
            self._children[name] = _Child(spec, ports, _COLORS[n % len(_COLORS)])
        self._server = await asyncio.start_server(self._serve_control, "127.0.0.1", 0)
        self.control_port = self._server.sockets[0].getsockname()[1]
        self._write_state()
        for child in self._children.values():
            await self._spawn(child)

    async def wait_healthy(self, within: float = 60.0) -> None:
        """Wait until every service answers its health check; ``TimeoutError`` naming the
        ones that do not after ``within`` seconds."""
        await _wait_healthy(
            {
                name: f"{self.url(name, c.spec.health_port)}{c.spec.health_path}"
                for name, c in self._children.items()
                if c.spec.health_port is not None
            },
            within,
        )

    async def stop(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL after ``STOP_GRACE``) and the socket."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await asyncio.gather(*(self.stop_service(n) for n in self._children))
        for child in self._children.values():
            if child.watcher is not None:
                child.watcher.cancel()
        with contextlib.suppress(FileNotFoundError):
            (self.system.state_dir / "supervisor.json").unlink()

    # -- commands -------------------------------------------------------------------------------

    def _child(self, name: str) -> _Child:
        try:
            return self._children[name]
        except KeyError:
            raise SupervisorError(
                f"no service {name!r} in this system (known: {sorted(self._children)})"
            ) from None

    def kill(self, name: str) -> int | None:
        """SIGKILL the service (as a crash would); it is restarted like any crashed service.
        Returns the killed pid (None when it was not running)."""
        process = self._child(name).process
        if process is None or process.returncode is not None:
            return None
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return process.pid

    async def stop_service(self, name: str, *, kill: bool = False) -> None:
        """Stop the service and keep it stopped: SIGTERM (it deregisters and drains), SIGKILL
        after ``STOP_GRACE``; with ``kill``, SIGKILL at once (it dies as in a crash)."""
        child = self._child(name)
        child.wanted = False
        process = child.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if kill:
                process.kill()
            else:
                process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        await asyncio.gather(*child.pumps, return_exceptions=True)

    async def start_service(self, name: str) -> None:
        """Start a stopped service again, on the same ports."""
        child = self._child(name)
        child.wanted = True
        if child.process is None or child.process.returncode is not None:
            await self._spawn(child)

    async def restart(self, name: str) -> None:
        """Stop, then start the service."""
        await self.stop_service(name)
        await self.start_service(name)

    def status(self) -> dict[str, Any]:
        """Every service: pid, running, restarts, ports."""
        out: dict[str, Any] = {}
        for name, child in self._children.items():
            process = child.process
            running = process is not None and process.returncode is None
            out[name] = {
                "pid": process.pid if process is not None else None,
                "running": running,
                "wanted": child.wanted,
                "restarts": child.restarts,
                "ports": child.ports,
            }
        return out

    # -- internals ------------------------------------------------------------------------------

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        fill = {"python": sys.executable, "root": str(self.system.root)}
        argv = [part.format(**fill) for part in spec.command]
        child.process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.system.root,
            env=self.environment(spec, child.ports),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the supervisor only
        )
        child.started_at = time.monotonic()
        assert child.process.stdout is not None
        child.pumps = [asyncio.create_task(self._pump(child, child.process.stdout))]
        if child.watcher is None or child.watcher.done():
            child.watcher = asyncio.create_task(self._watch(child))
        self._write_state()

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        name = child.spec.name.ljust(self._width)
        prefix = f"\x1b[{child.color}m{name} |\x1b[0m " if self._color else f"{name} | "
        while True:
            line = await stream.readline()
            if not line:
                return
            self._output(prefix + line.decode(errors="replace").rstrip())

    async def _watch(self, child: _Child) -> None:
        """Restart the child whenever it exits while it is wanted, with backoff."""
        delay = RESTART_BACKOFF[0]
        while True:
            process = child.process
            if process is None:
                return
            code = await process.wait()
            await asyncio.gather(*child.pumps, return_exceptions=True)
            if not child.wanted or child.process is not process:
                if child.process is process:
                    return
                continue
            lived = time.monotonic() - child.started_at
            delay = RESTART_BACKOFF[0] if lived > 10 else min(delay * 2, RESTART_BACKOFF[1])
            self._output(f"{child.spec.name} exited with {code}; restarting in {delay:.1f} s")
            await asyncio.sleep(delay)
            if child.wanted and child.process is process:
                child.restarts += 1
                await self._spawn(child)

    def _write_state(self) -> None:
        state = {
            "system": self.system.name,
            "pid": os.getpid(),
            "control_port": self.control_port,
            "entry": self.entry_url,
            "services": self.status(),
        }
        path = self.system.state_dir / "supervisor.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = (await reader.readline()).decode().split()
            reply = await self.command(line)
        except SupervisorError as exc:
            reply = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            writer.close()

    async def command(self, words: list[str]) -> dict[str, Any]:
        """Run one control command: ``status``, or ``VERB SERVICE`` with VERB one of ``kill``
        (SIGKILL; restarted as after a crash), ``down`` (SIGKILL; stays down), ``stop``
        (SIGTERM; stays down), ``start``, ``restart``."""
        if words == ["status"]:
            return {"ok": True, "services": self.status(), "entry": self.entry_url}
        if len(words) == 2 and words[0] in VERBS:
            verb, name = words
            if verb == "kill":
                return {"ok": True, "killed": self.kill(name)}
            if verb == "down":
                await self.stop_service(name, kill=True)
            elif verb == "stop":
                await self.stop_service(name)
            elif verb == "start":
                await self.start_service(name)
            else:
                await self.restart(name)
            self._write_state()
            return {"ok": True}
        raise SupervisorError(
            f"unknown command {' '.join(words)!r}: use status, or {'|'.join(VERBS)} SERVICE"
        )


class Monolith(AsyncStarting):
    """Every service of ``system`` in this process, from the same code: each service module's
    ``main()`` runs as a task, with the variables of ``monolith.env`` in the system file
    (memory broker and registry, in-process gRPC) on top of the system's.

    A service marked ``process: true`` runs as a child process instead (moved out); the
    file-based defaults of the system then stay, since memory brokers and registries cannot be
    shared with another process. Commands act on tasks: ``down``/``stop`` cancel the
    service's task (its gRPC servers leave their addresses), ``start`` runs it again, ``kill``
    does both. The same surface as ``Supervisor`` (``url``, ``entry_url``, ``command``...).
    """

    def __init__(
        self,
        system: SystemSpec,
        *,
        env: Mapping[str, str] | None = None,
        output: Callable[[str], None] | None = None,
    ) -> None:
        self.system = system
        inside = {n: s for n, s in system.services.items() if not s.process}
        outside = {n: s for n, s in system.services.items() if s.process}
        for name, spec in inside.items():
            if spec.module is None:
                raise SupervisorError(
                    f"service {name!r} has no 'module': a monolith imports each service"
                )
        extra = dict(system.monolith_env) if not outside else {}
        self._env = {**extra, **dict(env or {})}
        self._specs = inside
        self._ports: dict[str, dict[str, int]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._restarts: dict[str, int] = dict.fromkeys(inside, 0)
        self._output = output or (lambda line: print(line, flush=True))
        self._children: Supervisor | None = None
        if outside:
            # the children are this system less its in-process services; the entry is the
            # monolith's to report (it may run inside), so theirs names none
            sub = replace(system, services=outside, entry_service=None)
            self._children = Supervisor(sub, env=self._env, output=output)
        self._helper = Supervisor(system, env=self._env, output=output)
        self._saved_environ: dict[str, str] | None = None

    def url(self, service: str, port: str = "http") -> str:
        """``http://127.0.0.1:<port>`` of a service's named port."""
        if service in self._ports:
            return f"http://127.0.0.1:{self._ports[service][port]}"
        if self._children is not None:
            return self._children.url(service, port)
        raise SupervisorError(f"no service {service!r} in this system")

    @property
    def entry_url(self) -> str | None:
        """The system's entry point."""
        return _entry_url(self.system, self.url)

    def service_env(self, service: str) -> dict[str, str]:
        """The variables ``service`` runs with."""
        if service in self._specs:
            return self._helper.environment(self._specs[service], self._ports[service])
        assert self._children is not None
        return self._children.service_env(service)

    async def start(self) -> None:
        """Start every service: tasks here, children for the services moved out."""
        self.system.state_dir.mkdir(parents=True, exist_ok=True)
        for name, spec in self._specs.items():
            self._ports[name] = {p: _free_port() for p in spec.ports}
        # One process, one environment: the services' variables have distinct names. Put
        # back as it was on stop.
        self._saved_environ = dict(os.environ)
        for name, spec in self._specs.items():
            os.environ.update(self._helper.environment(spec, self._ports[name]))
        root = str(self.system.root)
        if root not in sys.path:
            sys.path.insert(0, root)
        if self._children is not None:
            await self._children.start()
        for name in self._specs:
            self._launch(name)

    def _launch(self, name: str) -> None:
        import importlib

        module = self._specs[name].module
        assert module is not None
        main = importlib.import_module(module).main
        if "stop" in inspect.signature(main).parameters:  # leaves cleanly when told to
            stop = self._stops[name] = asyncio.Event()
            coro = main(stop=stop)
        else:
            coro = main()
        self._tasks[name] = asyncio.create_task(coro, name=f"service-{name}")

    async def wait_healthy(self, within: float = 60.0) -> None:
        """Wait until every service answers its health check."""
        pending = {
            name: f"{self.url(name, spec.health_port)}{spec.health_path}"
            for name, spec in self._specs.items()
            if spec.health_port is not None
        }
        await _wait_healthy(pending, within)
        if self._children is not None:
            await self._children.wait_healthy(within)

    async def _cancel(self, name: str, *, graceful: bool = True) -> None:
        """End a service's task: through its ``stop`` event when it takes one (it
        deregisters and drains), cancelled after ``STOP_GRACE`` or at once."""
        task = self._tasks.pop(name, None)
        stop = self._stops.pop(name, None)
        if task is None:
            return
        if graceful and stop is not None:
            stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def command(self, words: list[str]) -> dict[str, Any]:
        """As ``Supervisor.command``, on the services' tasks."""
        if len(words) == 2 and words[0] in VERBS:
            verb, name = words
            if name not in self._specs:
                if self._children is not None:
                    return await self._children.command(words)
                raise SupervisorError(f"no service {name!r} in this system")
            if verb in ("kill", "down", "stop", "restart"):
                await self._cancel(name, graceful=verb in ("stop", "restart"))
            if verb in ("kill", "start", "restart") and name not in self._tasks:
                self._restarts[name] += verb != "start"
                self._launch(name)
            return {"ok": True}
        if words == ["status"]:
            return {"ok": True, "services": self.status(), "entry": self.entry_url}
        raise SupervisorError(f"unknown command {' '.join(words)!r}")

    def status(self) -> dict[str, Any]:
        """Every in-process service: running, restarts, ports."""
        out: dict[str, Any] = {
            name: {
                "pid": os.getpid(),
                "running": name in self._tasks and not self._tasks[name].done(),
                "restarts": self._restarts[name],
                "ports": self._ports.get(name, {}),
            }
            for name in self._specs
        }
        if self._children is not None:
            out.update(self._children.status())
        return out

    async def stop(self) -> None:
        """Cancel every service's task; stop the children; restore the environment."""
        import logging

        # uvicorn logs a cancelled lifespan as an error; here it is how a monolith stops.
        uvicorn_log = logging.getLogger("uvicorn.error")
        was_disabled, uvicorn_log.disabled = uvicorn_log.disabled, True
        try:
            await asyncio.gather(*(self._cancel(n) for n in list(self._tasks)))
        finally:
            uvicorn_log.disabled = was_disabled
        if self._children is not None:
            await self._children.stop()
        if self._saved_environ is not None:
            os.environ.clear()
            os.environ.update(self._saved_environ)
            self._saved_environ = None


def control(state_dir: str | Path, *words: str, timeout: float = 15.0) -> dict[str, Any]:
    """Send one command to the supervisor running the system whose state is in ``state_dir``."""
    path = Path(state_dir) / "supervisor.json"
    try:
        port = int(json.loads(path.read_text())["control_port"])
    except (OSError, ValueError, KeyError) as exc:
        raise SupervisorError(f"no running system found in {state_dir} ({exc})") from exc
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall((" ".join(words) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise SupervisorError(f"the supervisor at 127.0.0.1:{port} does not answer: {exc}") from exc
    reply: dict[str, Any] = json.loads(data)
    return reply


def set_switches(system: SystemSpec, service: str, values: Mapping[str, float]) -> None:
    """Set chaos switches of ``service`` in ``<state_dir>/chaos.json`` (``{service: {name:
    value}}``), which the system's services re-read while they run."""
    if service not in system.services:
        raise SupervisorError(
            f"no service {service!r} in this system (known: {sorted(system.services)})"
        )
    system.state_dir.mkdir(parents=True, exist_ok=True)
    path = system.state_dir / "chaos.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault(service, {}).update(values)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set ``stop`` (the services are then stopped cleanly)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
