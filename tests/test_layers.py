"""The architecture's import direction, enforced: pure core <- drivers and adapters <- apps.

Imports are read from the source with ``ast`` (every ``import``, ``from ... import``, and
``importlib.import_module("...")`` with a literal name, wherever it sits, lazy ones included), so
a violation fails here even when no test happens to execute the offending line. What ``import
interlink`` really loads is checked in a fresh interpreter. The checkers are plain functions,
tested on synthetic sources at the bottom so a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Every top-level module and package of interlink is in exactly one layer; a pattern that
# matches nothing is an error, so the rules follow the tree (test_every_module_has_a_layer).

# Standard library only, and only other pure modules.
PURE = (
    "interlink._version",
    "interlink._closing",
    "interlink.errors",
    "interlink.clock",
    "interlink.context",  # contextvars for deadline and correlation id, read by the pure deadline
    "interlink.resilience",
    "interlink.resilience.*",
    "interlink.discovery.outlier",
    "interlink.discovery.balancer",
    "interlink.discovery.instance",
    "interlink.messaging.envelope",
    "interlink.messaging._decisions",  # split from the envelope, re-exported by it
    "interlink.saga.state",
)

# Drivers and adapters: may import the pure core and third-party extras (lazily), never an app.
ADAPTERS = (
    "interlink._asyncpg",
    "interlink._sqlite_thread",
    "interlink.discovery",
    "interlink.grpc",
    "interlink.http",
    "interlink.messaging",
    "interlink.metrics",
    "interlink.outbox",
    "interlink.saga",
    "interlink.testing",
    "interlink.tracing",
)

# Assembly only. Apps may import anything; nothing else may import an app. (A dashboard or
# supervisor belongs here once it exists.)
APPS = (
    "interlink._url_options",  # the URL options of the CLI's and the dashboard's commands
    "interlink.cli",
    "interlink.dashboard",
    "interlink.demo",
    "interlink.gateway",
    "interlink.proxy",
    "interlink.supervisor",
)

# The top of the apps: it registers the other apps' commands, so none of them imports it.
CLI = "interlink.cli"

# `import interlink` must load none of these: the CLI's dependencies and every optional extra.
NOT_ON_IMPORT = (
    "typer",
    "rich",
    "click",
    "pydantic",
    "aiohttp",
    "httpx",
    "grpc",
    "nats",
    "aio_pika",
    "redis",
    "asyncpg",
    "psycopg",
    "opentelemetry",
    "prometheus_client",
)


def is_pure(module: str) -> bool:
    """Whether ``module`` belongs to the pure core."""
    return any(fnmatchcase(module, pattern) for pattern in PURE)


def is_app(module: str) -> bool:
    """Whether ``module`` is an app or lies inside one."""
    return any(module == app or module.startswith(app + ".") for app in APPS)


def is_adapter(module: str) -> bool:
    """Whether ``module`` is a driver or adapter (and not in the pure core)."""
    inside = any(module == top or module.startswith(top + ".") for top in ADAPTERS)
    return inside and not is_pure(module)


def layers_of(module: str) -> list[str]:
    """The layers ``module`` is in: exactly one for a well-placed module."""
    found = [("pure", is_pure), ("adapter", is_adapter), ("app", is_app)]
    return [name for name, test in found if test(module)]


@dataclass(frozen=True)
class Module:
    """One source file, as the checkers see it."""

    name: str
    source: str
    is_package: bool = False
    path: str = "<string>"


@dataclass(frozen=True)
class Import:
    """``importer`` loads ``target`` at ``line``."""

    importer: str
    target: str
    line: int


def discover(src: Path = SRC) -> dict[str, Module]:
    """Every module under ``src/interlink``, keyed by dotted name."""
    modules: dict[str, Module] = {}
    for path in sorted((src / "interlink").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path.read_text(encoding="utf-8"), is_package, str(path))
    return modules


def _resolve(module: Module, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{target}" if target else package


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"}


def imports_of(module: Module, known: Iterable[str] = ()) -> list[Import]:
    """What ``module`` imports, resolved to absolute module names.

    ``from package import name`` counts as importing ``package.name`` when that is a known module
    or an app below a non-app package (``from interlink import demo``, before the demo exists),
    otherwise as importing ``package``.
    """
    known = set(known)
    found: list[Import] = []
    for node in ast.walk(ast.parse(module.source, module.path)):
        if isinstance(node, ast.Import):
            found.extend(Import(module.name, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                submodule = alias.name != "*" and (
                    candidate in known or (is_app(candidate) and not is_app(base))
                )
                found.append(Import(module.name, candidate if submodule else base, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and _is_import_module_call(node)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(Import(module.name, node.args[0].value, node.lineno))
    return found


def _where(module: Module, imp: Import) -> str:
    return f"{module.path}:{imp.line}: {imp.importer} imports {imp.target}"


def purity_violations(modules: Mapping[str, Module]) -> list[str]:
    """Pure modules importing anything but the standard library and other pure modules."""
    violations = []
    for module in modules.values():
        if not is_pure(module.name):
            continue
        for imp in imports_of(module, modules):
            top = imp.target.partition(".")[0]
            allowed = is_pure(imp.target) if top == "interlink" else top in sys.stdlib_module_names
            if not allowed:
                violations.append(_where(module, imp))
    return violations


def app_violations(modules: Mapping[str, Module]) -> list[str]:
    """Modules outside the apps importing an app."""
    return [
        _where(module, imp)
        for module in modules.values()
        if not is_app(module.name)
        for imp in imports_of(module, modules)
        if is_app(imp.target)
    ]


def cli_violations(modules: Mapping[str, Module]) -> list[str]:
    """Modules outside the CLI importing it: the CLI assembles the apps, none of them uses it."""
    return [
        _where(module, imp)
        for module in modules.values()
        if not _inside(module.name, CLI)
        for imp in imports_of(module, modules)
        if _inside(imp.target, CLI)
    ]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules_loaded_by(statement: str, *, path: Path = SRC) -> set[str]:
    """Top-level names of the modules ``statement`` loads in a fresh interpreter.

    ``path`` goes first on ``sys.path``, so the tree next to this test is the one measured.
    Whatever the interpreter loads at startup (site hooks) is not counted.
    """
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return {name.partition(".")[0] for name in json.loads(done.stdout)}


# --- the real tree ------------------------------------------------------------------------------

MODULES = discover()
PURE_MODULES = sorted(name for name in MODULES if is_pure(name))


def test_tree_is_found() -> None:
    """The walk sees the package, so the checks below are not vacuous."""
    assert {"interlink", "interlink.errors", "interlink.resilience.deadline"} <= set(MODULES)
    assert {"interlink.errors", "interlink.clock", "interlink.resilience"} <= set(PURE_MODULES)


def test_every_module_has_a_layer() -> None:
    """Each module below ``interlink`` is pure, an adapter or an app: exactly one. A new package
    fails here until its layer is written down above."""
    misplaced = {
        name: layers_of(name)
        for name in MODULES
        if name != "interlink" and len(layers_of(name)) != 1
    }
    assert not misplaced, (
        f"modules in no layer or in several (add them to PURE, ADAPTERS or APPS): {misplaced}"
    )


@pytest.mark.parametrize("pattern", [*PURE, *ADAPTERS, *APPS])
def test_every_rule_names_modules_that_exist(pattern: str) -> None:
    """No rule for a module that is not there: rules follow the tree, not plans."""
    assert any(fnmatchcase(name, pattern) for name in MODULES), (
        f"{pattern!r} in tests/test_layers.py matches no module under src/interlink"
    )


def test_pure_core_imports_only_stdlib_and_pure_modules() -> None:
    """Pure modules depend on the standard library and each other, nothing else."""
    violations = purity_violations(MODULES)
    assert not violations, "pure modules reach outside the core:\n" + "\n".join(violations)


def test_nothing_below_the_apps_imports_an_app() -> None:
    """Library code never reaches up into the CLI, the demo or the proxy apps."""
    violations = app_violations(MODULES)
    assert not violations, "library modules import an app:\n" + "\n".join(violations)


def test_no_other_app_imports_the_cli() -> None:
    """The CLI sits on top of the apps (``python -m interlink.dashboard`` included)."""
    violations = cli_violations(MODULES)
    assert not violations, "modules import the CLI:\n" + "\n".join(violations)


def test_the_cli_loads_no_server() -> None:
    """The CLI registers the dashboard's command without loading its app or a server."""
    loaded = modules_loaded_by("import interlink.cli.main")
    assert {"interlink", "typer"} <= loaded
    assert not loaded & {"starlette", "httpx", "uvicorn"}, sorted(loaded)


def test_import_interlink_loads_no_cli_or_extra() -> None:
    """`import interlink` stays cheap: no typer, rich, or optional extra."""
    loaded = modules_loaded_by("import interlink")
    assert "interlink" in loaded
    leaked = sorted(loaded & set(NOT_ON_IMPORT))
    assert not leaked, f"`import interlink` loads {leaked}; import them lazily where used"


def test_import_interlink_loads_only_stdlib() -> None:
    """`import interlink` works with no third-party package at all."""
    loaded = modules_loaded_by("import interlink")
    third_party = sorted(loaded - set(sys.stdlib_module_names) - {"interlink"})
    assert not third_party, f"`import interlink` loads third-party {third_party}"


@pytest.mark.parametrize("name", PURE_MODULES)
def test_pure_module_loads_only_stdlib(name: str) -> None:
    """Importing a pure module (parent packages included) loads no third-party package."""
    loaded = modules_loaded_by(f"import {name}")
    third_party = sorted(loaded - set(sys.stdlib_module_names) - {"interlink"})
    assert not third_party, f"`import {name}` loads third-party {third_party}"


# --- the checkers, on synthetic sources ---------------------------------------------------------


def _tree(**sources: str) -> dict[str, Module]:
    """Modules named with ``__`` for dots; a trailing ``__init`` marks a package."""
    modules = {}
    for key, source in sources.items():
        is_package = key.endswith("__init")
        name = key.removesuffix("__init").replace("__", ".")
        modules[name] = Module(name, textwrap.dedent(source), is_package)
    return modules


def test_patterns_classify_modules() -> None:
    """The layer patterns match by module, not by string prefix."""
    assert is_pure("interlink.resilience.breaker")
    assert is_pure("interlink.saga.state")
    assert not is_pure("interlink.saga.orchestrator")
    assert not is_pure("interlink")
    assert is_app("interlink.cli.dlq")
    assert is_app("interlink.demo")
    assert not is_app("interlink.client")
    assert layers_of("interlink.resilience.retry") == ["pure"]
    assert layers_of("interlink.http.client") == ["adapter"]
    assert layers_of("interlink.cli.main") == ["app"]
    assert layers_of("interlink.sidecar") == []


def test_checker_accepts_stdlib_and_pure_imports() -> None:
    """Standard library, pure absolute and pure relative imports pass."""
    modules = _tree(
        interlink__resilience__breaker="""
            from __future__ import annotations
            import asyncio, threading
            from interlink.errors import CircuitOpenError
            from interlink import clock
            from . import _validate
            from .events import Emitter
        """,
        interlink__resilience___validate="",
        interlink__clock="",
    )
    assert purity_violations(modules) == []


def test_checker_flags_third_party_import_in_pure_module() -> None:
    """A pure module importing httpx is reported with file, line and target."""
    modules = _tree(interlink__resilience__retry="import math\nimport httpx\n")
    assert purity_violations(modules) == ["<string>:2: interlink.resilience.retry imports httpx"]


def test_checker_flags_pure_module_importing_a_driver() -> None:
    """A pure module importing a non-pure interlink module is reported, relative or not."""
    modules = _tree(
        interlink__saga__state="from ..http import client\nimport interlink.metrics\n",
        interlink__http__client="",
    )
    assert purity_violations(modules) == [
        "<string>:1: interlink.saga.state imports interlink.http.client",
        "<string>:2: interlink.saga.state imports interlink.metrics",
    ]


def test_checker_flags_lazy_and_dynamic_imports() -> None:
    """Imports inside functions and import_module("...") count too."""
    modules = _tree(
        interlink__clock="""
            import importlib
            def f():
                import redis
                return importlib.import_module("nats")
        """
    )
    targets = [v.rpartition(" ")[2] for v in purity_violations(modules)]
    assert targets == ["redis", "nats"]


def test_checker_flags_library_module_importing_an_app() -> None:
    """Drivers and pure modules may not import the CLI or the demo, however they import."""
    modules = _tree(
        interlink__http__client="from interlink import demo\nimport interlink.cli.main\n",
        interlink__errors="from .cli.saga import build\n",
        interlink__testing__kit="import importlib\nimportlib.import_module('interlink.demo._x')\n",
    )
    assert sorted(v.rpartition(" imports ")[2] for v in app_violations(modules)) == [
        "interlink.cli.main",
        "interlink.cli.saga",
        "interlink.demo",
        "interlink.demo._x",
    ]


def test_checker_lets_apps_import_apps() -> None:
    """The CLI may import the demo, and the demo the CLI's parts."""
    modules = _tree(
        interlink__cli__main="import importlib\nimportlib.import_module('interlink.demo')\n",
        interlink__demo___report="from interlink.cli import _logging\n",
        interlink__cli__dlq="from interlink.messaging.broker import from_url\n",
    )
    assert app_violations(modules) == []


def test_checker_flags_an_app_importing_the_cli() -> None:
    """Another app reaching the CLI is reported, relative or not; the CLI's own modules
    importing each other and the apps are not."""
    modules = _tree(
        interlink__dashboard__command="import math\nfrom interlink.cli._options import group\n",
        interlink__demo__run="from ..cli import _logging\n",
        interlink__cli__main="import interlink.cli.saga\nimport interlink.dashboard.command\n",
        interlink__cli__saga="",
    )
    assert cli_violations(modules) == [
        "<string>:2: interlink.dashboard.command imports interlink.cli._options",
        "<string>:1: interlink.demo.run imports interlink.cli",
    ]


def test_checker_resolves_relative_imports_in_packages() -> None:
    """`from . import x` in a package __init__ resolves against the package itself."""
    modules = _tree(
        interlink__resilience__init="from . import breaker\nfrom .. import cli\n",
        interlink__resilience__breaker="",
    )
    assert [i.target for i in imports_of(modules["interlink.resilience"], modules)] == [
        "interlink.resilience.breaker",
        "interlink.cli",
    ]


def test_loaded_modules_checker_sees_a_third_party_import(tmp_path: Path) -> None:
    """The fresh-interpreter check reports a package that imports rich."""
    (tmp_path / "leaky").mkdir()
    (tmp_path / "leaky" / "__init__.py").write_text("import rich.console\n")
    loaded = modules_loaded_by("import leaky", path=tmp_path)
    assert {"leaky", "rich"} <= loaded
