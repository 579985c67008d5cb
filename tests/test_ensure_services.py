"""scripts/ensure-services.sh: what `make test` runs to install and start the shared servers.

The install path runs on a PATH that has none of the servers, with stand-ins for ``id`` (to be
root or not) and ``apt-get`` (which logs its arguments), so these tests install nothing, touch no
network and leave the machine's running servers alone. The real start path runs in every
``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-services.sh"
BASH = shutil.which("bash") or "/bin/bash"
ALL = "postgresql redis-server rabbitmq-server nats-server"
INSTALL_LINE = f"apt-get install -y --no-install-recommends {ALL}"


def bare_path(tmp_path: Path, *, uid: int, apt_get: str = "exit 0") -> Path:
    """A PATH directory with no server on it: ``id -u`` prints ``uid``, ``apt-get`` logs its
    arguments to apt.log and then runs ``apt_get``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    timeout = shutil.which("timeout")
    assert timeout is not None
    (bin_dir / "timeout").symlink_to(timeout)
    scripts = {"id": f"echo {uid}", "apt-get": f'echo "$*" >> {tmp_path}/apt.log\n{apt_get}'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run(path: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_root_dry_run_names_every_missing_server_in_one_install(tmp_path: Path) -> None:
    """As root, with no server installed, one apt-get line installs all four (dry run: shown,
    not run)."""
    done = run(str(bare_path(tmp_path, uid=0)), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"missing {ALL}; would run: {INSTALL_LINE}" in done.stdout
    assert not (tmp_path / "apt.log").exists()


def test_without_root_the_install_line_is_printed_and_the_run_fails(tmp_path: Path) -> None:
    """Not root: nothing is installed; the one line to run as root is printed, and the script
    fails since the tests cannot run without the servers."""
    done = run(str(bare_path(tmp_path, uid=1000)))
    assert done.returncode == 1
    assert INSTALL_LINE in done.stdout
    assert not (tmp_path / "apt.log").exists()


def test_a_failing_install_updates_once_then_fails_naming_the_packages(tmp_path: Path) -> None:
    """apt-get install fails (e.g. stale lists): update, one more try, then a clear failure."""
    done = run(str(bare_path(tmp_path, uid=0, apt_get="exit 100")))
    assert done.returncode == 1
    assert f"could not install {ALL} with apt-get" in done.stdout
    calls = [line.split()[0] for line in (tmp_path / "apt.log").read_text().splitlines()]
    assert calls == ["install", "update", "install"]


def test_installed_servers_need_no_install(tmp_path: Path) -> None:
    """On this machine (where `make test` has run the script) nothing is missing."""
    done = run(os.environ["PATH"], "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "are installed" in done.stdout
    assert "would run" not in done.stdout


def test_an_unknown_option_is_refused() -> None:
    """A misspelt flag does not silently install and start everything."""
    done = run(os.environ["PATH"], "--dryrun")
    assert done.returncode == 2
    assert "usage:" in done.stderr
