"""scripts/ensure-etcd.sh: what `make test` runs on a fresh machine to get etcd.

The install path runs against a fake ``apt-get`` on a PATH without etcd, so these tests install
nothing and touch no network. (``--start`` runs for real in the ``etcd`` fixture.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from _discovery_support import ENSURE_ETCD

BASH = shutil.which("bash") or "/bin/bash"


def fake_bin(tmp_path: Path, apt_get: str) -> Path:
    """A PATH directory with ``id``, ``timeout``, the given ``apt-get`` script and a ``sudo -n``
    that just runs its command (for non-root runs), but no etcd."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("id", "timeout"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    scripts = {
        "apt-get": f'echo "$*" >> {tmp_path}/apt.log\n{apt_get}',
        "sudo": '[ "$1" = -n ] && shift\nexec "$@"',
    }
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return bin_dir


def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(path), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [BASH, str(ENSURE_ETCD), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_missing_etcd_is_installed_from_debian_packages(tmp_path: Path) -> None:
    """Without etcd, apt-get installs etcd-server (bounded, no retries) and the path is
    printed; a second run finds it and calls apt no more."""
    bin_dir = fake_bin(tmp_path, f"/bin/cp /bin/true {tmp_path}/bin/etcd; exit 0")
    first = run(bin_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(bin_dir / "etcd")
    calls = (tmp_path / "apt.log").read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].startswith("install -y -q --no-install-recommends")
    assert calls[0].endswith(" etcd-server")
    assert "Acquire::Retries=0" in calls[0]
    assert "Acquire::http::Timeout=10" in calls[0]
    again = run(bin_dir)
    assert again.returncode == 0
    assert again.stdout.strip() == str(bin_dir / "etcd")
    assert len((tmp_path / "apt.log").read_text().splitlines()) == 1


def test_offline_install_fails_fast_with_a_message(tmp_path: Path) -> None:
    """When apt cannot fetch, the script updates once, tries again, and exits 1 with apt's
    error and its own: no hang."""
    apt_get = "echo \"E: Temporary failure resolving 'deb.debian.org'\" >&2; exit 100"
    bin_dir = fake_bin(tmp_path, apt_get)
    started = time.monotonic()
    done = run(bin_dir)
    assert time.monotonic() - started < 10
    assert done.returncode == 1
    assert "Temporary failure resolving" in done.stderr
    assert "ensure-etcd: could not install etcd-server with apt-get" in done.stderr
    calls = [line.split()[0] for line in (tmp_path / "apt.log").read_text().splitlines()]
    assert calls == ["install", "update", "install"]
