"""What the installed distribution promises: extras, typing marker, version, console script."""

from __future__ import annotations

import re
from importlib import metadata, resources

import pytest

import interlink

DIST = metadata.distribution("interlink")

# extra -> a requirement it must pull in (the project name, normalized)
EXTRAS = {
    "nats": "nats-py",
    "rabbitmq": "aio-pika",
    "redis": "redis",
    "kafka": "aiokafka",
    "postgres": "asyncpg",
    "grpc": "grpcio",
    "otel": "opentelemetry-sdk",
}


def requirements_of(extra: str | None) -> set[str]:
    """Normalized names of what ``interlink[extra]`` adds, or of the core install for None."""
    names = set()
    for requirement in DIST.requires or []:
        spec, _, marker = requirement.partition(";")
        if extra is None:
            wanted = "extra" not in marker
        else:
            wanted = re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", marker) is not None
        if wanted:
            name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
            assert name is not None, requirement
            names.add(re.sub(r"[-_.]+", "-", name.group()).lower())
    return names


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_is_declared(extra: str) -> None:
    """The metadata offers each backend extra by name."""
    assert extra in (DIST.metadata.get_all("Provides-Extra") or [])


@pytest.mark.parametrize(("extra", "requirement"), sorted(EXTRAS.items()))
def test_extra_pulls_in_its_client(extra: str, requirement: str) -> None:
    """Each extra installs the client library its backend imports."""
    assert requirement in requirements_of(extra)


def test_core_install_needs_only_the_cli_libraries() -> None:
    """A plain `pip install interlink` brings typer and rich and nothing else."""
    assert requirements_of(None) == {"typer", "rich"}


def test_py_typed_marker_ships_with_the_package() -> None:
    """py.typed sits in the package, so type checkers use interlink's annotations."""
    assert (resources.files("interlink") / "py.typed").is_file()


def test_version_matches_the_metadata() -> None:
    """interlink.__version__ is the version the installer recorded (reinstall if not)."""
    assert interlink.__version__ == DIST.version


def test_console_script_points_at_the_cli() -> None:
    """The `interlink` script entry point loads interlink.cli.main:main."""
    (script,) = DIST.entry_points.select(group="console_scripts", name="interlink")
    assert script.value == "interlink.cli.main:main"
    assert callable(script.load())


def test_python_requirement_is_declared() -> None:
    """The metadata states the minimum Python the code is written for."""
    assert DIST.metadata["Requires-Python"] == ">=3.11"
