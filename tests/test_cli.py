"""The ``interlink`` command line: the installed script, the command tree, and its logging."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from interlink import __version__
from interlink.cli._logging import configure_logging
from interlink.cli.main import app

SCRIPT = Path(sys.executable).parent / "interlink"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script as a user would, with plain wide output."""
    if not SCRIPT.exists():
        pytest.fail(f"console script missing: {SCRIPT}; run `pip install -e .` in this venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLINK_")}
    env.pop("FORCE_COLOR", None)
    env |= {"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group below ``group``, as the words typed to reach it."""
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, TyperGroup):
            yield from command_paths(command, (*prefix, name))


def root_command() -> TyperGroup:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    return root


def summary_of(path: tuple[str, ...]) -> str:
    command: Any = root_command()
    for name in path:
        command = command.commands[name]
    help_text: str = command.help or ""
    return help_text.strip().splitlines()[0] if help_text.strip() else ""


# --- the installed script -----------------------------------------------------------------------


def test_version_prints_name_and_version() -> None:
    """`interlink --version` prints exactly `interlink <version>`."""
    done = run_script("--version")
    assert (done.returncode, done.stdout) == (0, f"interlink {__version__}\n")


def test_help_lists_every_command_with_its_summary() -> None:
    """`interlink --help` names each top-level command next to its one-line help."""
    done = run_script("--help")
    assert done.returncode == 0
    names = list(root_command().commands)
    assert "demo" in names
    for name in names:
        line = next((ln for ln in done.stdout.splitlines() if f" {name} " in ln), "")
        assert summary_of((name,)) in line, f"{name!r} is listed without its summary"


def test_help_lists_the_global_options() -> None:
    """The top-level help documents --version and the logging options."""
    done = run_script("--help")
    for option in ("--version", "--log-format", "--log-level", "text|json"):
        assert option in done.stdout


def test_demo_help_documents_its_options() -> None:
    """`interlink demo --help` shows --seed with its default and --fast."""
    done = run_script("demo", "--help")
    assert done.returncode == 0
    assert "--seed" in done.stdout
    assert "default: 7" in done.stdout
    assert "--fast" in done.stdout


def test_demo_list_shows_every_scenario_of_the_system_file() -> None:
    """`interlink demo --list` prints each scenario the system file offers, with its title."""
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:  # the system's scenarios live in the repository's examples/
        sys.path.insert(0, str(root))
    from examples.food_delivery.scenarios import SCENARIOS

    system = root / "examples" / "food_delivery" / "system.yaml"
    done = run_script("demo", "--list", "--system", str(system))
    assert done.returncode == 0, done.stderr
    assert "resilience" in done.stdout
    for name, scenario in SCENARIOS.items():
        assert name in done.stdout
        assert scenario.title.split()[0] in done.stdout


def test_unknown_command_fails_with_a_pointer_to_help() -> None:
    """A mistyped command exits non-zero, names the command and points at --help."""
    done = run_script("frobnicate")
    assert done.returncode == 2
    assert "No such command 'frobnicate'" in done.stderr
    assert "interlink --help" in done.stderr


def test_no_arguments_shows_usage() -> None:
    """Bare `interlink` prints the usage instead of doing nothing."""
    done = run_script()
    assert "Usage: interlink" in done.stdout + done.stderr


# --- the command tree ---------------------------------------------------------------------------


def test_every_command_has_a_summary() -> None:
    """Each command and group carries a one-line help for the listing."""
    missing = [" ".join(path) for path in command_paths(root_command()) if not summary_of(path)]
    assert missing == []


def test_every_command_answers_help() -> None:
    """`interlink <command...> --help` succeeds for every command and group."""
    runner = CliRunner()
    for path in command_paths(root_command()):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.stdout


# --- demo wiring --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_interlink_logger() -> Iterator[None]:
    """configure_logging changes the shared `interlink` logger; put it back after each test."""
    logger = logging.getLogger("interlink")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def demo_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Stand a fake `interlink.demo` in for the real one and record its calls."""
    calls: list[tuple[int, bool]] = []
    fake = types.ModuleType("interlink.demo")

    def run(*, seed: int, fast: bool) -> None:
        calls.append((seed, fast))
        log = logging.getLogger("interlink.demo")
        log.info("phase done", extra={"phase": "breaker", "calls": 3})
        log.warning("downstream slow", extra={"p99_ms": 250.0})

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "interlink.demo", fake)
    return calls


def fake_demo_returning(monkeypatch: pytest.MonkeyPatch, run: Callable[..., Any]) -> None:
    fake = types.ModuleType("interlink.demo")
    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "interlink.demo", fake)


def test_demo_runs_with_defaults(demo_calls: list[tuple[int, bool]]) -> None:
    """`interlink demo` calls interlink.demo.run(seed=7, fast=False)."""
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert demo_calls == [(7, False)]


def test_demo_passes_seed_and_fast(demo_calls: list[tuple[int, bool]]) -> None:
    """--seed and --fast reach interlink.demo.run."""
    result = CliRunner().invoke(app, ["demo", "--seed", "3", "--fast"])
    assert result.exit_code == 0, result.output
    assert demo_calls == [(3, True)]


def test_demo_missing_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without interlink.demo the command says so on stderr and exits 1."""
    monkeypatch.setitem(sys.modules, "interlink.demo", None)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 1
    assert "error: the demo is not part of this installation" in result.stderr
    assert "Traceback" not in result.output


def test_demo_import_failure_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependency missing inside the demo is reported by name, with exit 1."""

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp")

    monkeypatch.setattr(importlib, "import_module", import_module)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 1
    assert "the demo could not be loaded: No module named 'aiohttp'" in result.stderr


def test_demo_exit_status_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-zero int returned by run() becomes the process exit status."""
    fake_demo_returning(monkeypatch, lambda *, seed, fast: 3)
    assert CliRunner().invoke(app, ["demo"]).exit_code == 3


def test_async_demo_is_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coroutine function as run() is driven to completion."""
    done: list[int] = []

    async def run(*, seed: int, fast: bool) -> None:
        done.append(seed)

    fake_demo_returning(monkeypatch, run)
    result = CliRunner().invoke(app, ["demo", "--seed", "11"])
    assert (result.exit_code, done) == (0, [11])


# --- logging ------------------------------------------------------------------------------------


def json_records(stderr: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert all(isinstance(record, dict) for record in records)
    return records


def test_json_logs_are_one_object_per_line(demo_calls: list[tuple[int, bool]]) -> None:
    """--log-format json writes ts, level, logger, msg and the extra fields per line."""
    result = CliRunner().invoke(app, ["--log-format", "json", "--log-level", "info", "demo"])
    assert result.exit_code == 0, result.output
    records = json_records(result.stderr)
    phase = next(r for r in records if r["msg"] == "phase done")
    assert list(phase)[:4] == ["ts", "level", "logger", "msg"]
    assert phase["level"] == "info"
    assert phase["logger"] == "interlink.demo"
    assert (phase["phase"], phase["calls"]) == ("breaker", 3)
    assert datetime.fromisoformat(phase["ts"]).utcoffset() is not None


def test_log_level_filters_records(demo_calls: list[tuple[int, bool]]) -> None:
    """At the default level (warning) info records are dropped and warnings kept."""
    result = CliRunner().invoke(app, ["--log-format", "json", "demo"])
    assert [r["msg"] for r in json_records(result.stderr)] == ["downstream slow"]


def test_debug_level_logs_the_cli_start(demo_calls: list[tuple[int, bool]]) -> None:
    """At debug the CLI logs which command starts and the version."""
    result = CliRunner().invoke(app, ["--log-format", "json", "--log-level", "DEBUG", "demo"])
    start = json_records(result.stderr)[0]
    assert (start["logger"], start["command"], start["version"]) == (
        "interlink.cli",
        "demo",
        __version__,
    )


def test_text_logs_keep_the_extra_fields(demo_calls: list[tuple[int, bool]]) -> None:
    """The default text format is for people and still shows key=value extras."""
    result = CliRunner().invoke(app, ["--log-level", "info", "demo"])
    assert "phase done phase='breaker' calls=3" in result.stderr
    assert json_records(result.stderr) == []


def test_log_format_is_read_from_the_environment(demo_calls: list[tuple[int, bool]]) -> None:
    """INTERLINK_LOG_FORMAT=json selects JSON without a flag."""
    result = CliRunner().invoke(app, ["demo"], env={"INTERLINK_LOG_FORMAT": "json"})
    assert [r["msg"] for r in json_records(result.stderr)] == ["downstream slow"]


def test_unknown_log_format_is_rejected() -> None:
    """--log-format xml fails with a usage error naming the bad value."""
    result = CliRunner().invoke(app, ["--log-format", "xml", "demo"])
    assert result.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in result.output


def test_configure_logging_twice_keeps_one_handler() -> None:
    """Reconfiguring replaces the CLI's handler instead of doubling every line."""
    configure_logging(level="info", fmt="json")
    handler = configure_logging(level="debug", fmt="text")
    logger = logging.getLogger("interlink")
    assert [h for h in logger.handlers if h.get_name() == "interlink.cli"] == [handler]
    assert (logger.level, logger.propagate) == (logging.DEBUG, False)


def test_json_exception_stays_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A logged traceback goes into the `exc` field of a single JSON line."""
    configure_logging(level="error", fmt="json")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("interlink.test").exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "RuntimeError: boom" in json.loads(lines[0])["exc"]


def test_configure_logging_rejects_bad_values() -> None:
    """Unknown levels and formats raise ValueError naming the parameter and value."""
    with pytest.raises(ValueError, match=r"'log_level' must be one of .*'debug'.*: 'loud'"):
        configure_logging(level="loud")
    with pytest.raises(ValueError, match=r"'log_format' must be one of 'text', 'json': 'xml'"):
        configure_logging(fmt="xml")
