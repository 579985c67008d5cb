"""interlink.supervisor: system files, and one service killed, stopped and started on command
while the others keep running (real child processes)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from interlink.supervisor import (
    Supervisor,
    SupervisorError,
    control,
    load_system,
    mint_entry_token,
    set_switches,
)

SLEEPER = "import os, time; print('up', os.getpid(), flush=True); time.sleep(600)"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "system.yaml"
    path.write_text(text)
    return path


def tiny(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        f"""
name: tiny
state_dir: state
services:
  a:
    command: ["{{python}}", "-c", "{SLEEPER}"]
  b:
    command: ["{{python}}", "-c", "{SLEEPER}"]
    env: {{GREETING: "hi {{state}}"}}
""",
    )


def test_a_system_file_needs_services(tmp_path: Path) -> None:
    """A file without services is refused, naming the file and the field."""
    path = write(tmp_path, "name: x\n")
    with pytest.raises(SupervisorError, match=r"system.yaml: 'services' must name at least one"):
        load_system(path)


def test_unknown_keys_and_bad_health_port_are_named(tmp_path: Path) -> None:
    """A typo in a service's keys, or a health check on an undeclared port, names both."""
    path = write(tmp_path, "services:\n  a:\n    module: m\n    prots: {}\n")
    with pytest.raises(SupervisorError, match=r"services.a: unknown keys \['prots'\]"):
        load_system(path)
    path = write(tmp_path, "services:\n  a:\n    module: m\n    health: {port: http}\n")
    with pytest.raises(SupervisorError, match=r"services.a.health.port must be one of \[\]"):
        load_system(path)


def test_the_food_delivery_system_file_loads() -> None:
    """The reference system's file: six services behind the gateway, its only entry, whose
    token the file says how to mint."""
    spec = load_system(Path(__file__).parents[2] / "examples/food_delivery/system.yaml")
    assert set(spec.services) == {
        "gateway",
        "order",
        "menu",
        "pricing",
        "payment",
        "dispatch",
        "notification",
    }
    assert (spec.entry_service, spec.entry_path) == ("gateway", "/orders")
    assert spec.scenarios == "examples.food_delivery.scenarios"
    token = mint_entry_token(spec, {"FOOD_JWT_SECRET": "k" * 32})
    assert token is not None
    assert token.count(".") == 2


def test_entry_token_must_name_a_function(tmp_path: Path) -> None:
    """entry.token is 'module:function'; anything else is refused at load."""
    path = write(
        tmp_path,
        "entry: {service: a, token: not-a-function}\nservices:\n  a:\n    module: m\n",
    )
    with pytest.raises(SupervisorError, match=r"entry.token must be 'module:function'"):
        load_system(path)


async def _pid(sup: Supervisor, lines: list[str], name: str, other_than: int | None = None) -> int:
    """The pid of ``name`` once that process has said it is up."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = sup.status()[name]
        pid = status["pid"]
        if status["running"] and pid != other_than and f"{name} | up {pid}" in lines:
            return int(pid)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} not running")


def test_kill_restarts_down_stays_down_start_brings_back(tmp_path: Path) -> None:
    """kill: restarted like a crash; down: stays down; start: back; the other never moves."""
    lines: list[str] = []

    async def main() -> None:
        spec = load_system(tiny(tmp_path))
        async with Supervisor(spec, output=lines.append, color=False) as sup:
            a1, b1 = await _pid(sup, lines, "a"), await _pid(sup, lines, "b")
            killed = await asyncio.to_thread(control, spec.state_dir, "kill", "a")
            assert killed == {"ok": True, "killed": a1}
            a2 = await _pid(sup, lines, "a", other_than=a1)
            assert sup.status()["a"]["restarts"] == 1
            await sup.command(["down", "a"])
            await asyncio.sleep(0.5)
            assert not sup.status()["a"]["running"]
            await sup.command(["start", "a"])
            a3 = await _pid(sup, lines, "a", other_than=a2)
            assert a3 not in (a1, a2)
            assert sup.status()["b"]["pid"] == b1
            with pytest.raises(SupervisorError, match="no service 'zz'"):
                await sup.command(["kill", "zz"])
        assert not (spec.state_dir / "supervisor.json").exists()

    asyncio.run(main())
    assert any(line.startswith("a exited with -9; restarting") for line in lines), lines


def test_environment_fills_state_and_lets_the_environment_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """{state} is filled in; a variable set in the environment wins over the file's value;
    explicit overrides win over both."""
    spec = load_system(tiny(tmp_path))
    sup = Supervisor(spec, env={"EXTRA": "1"})
    env = sup.environment(spec.services["b"], {})
    assert env["GREETING"] == f"hi {spec.state_dir}"
    assert env["EXTRA"] == "1"
    monkeypatch.setenv("GREETING", "from env")
    assert sup.environment(spec.services["b"], {})["GREETING"] == "from env"
    assert str(spec.root) in env["PYTHONPATH"].split(":")
    assert sys.executable


def test_switches_are_written_per_service(tmp_path: Path) -> None:
    """set_switches merges values per service; an unknown service is refused."""
    spec = load_system(tiny(tmp_path))
    set_switches(spec, "a", {"fail": 1.0})
    set_switches(spec, "a", {"slow_ms": 50})
    assert (spec.state_dir / "chaos.json").read_text().count("fail") == 1
    with pytest.raises(SupervisorError, match="no service 'c'"):
        set_switches(spec, "c", {"x": 1})


def test_control_without_a_running_system_says_so(tmp_path: Path) -> None:
    """interlink chaos against a folder with no supervisor: a clear error."""
    with pytest.raises(SupervisorError, match="no running system found"):
        control(tmp_path, "status")
