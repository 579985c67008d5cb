#!/usr/bin/env bash
# Run test suites on another CPython of this machine, in a venv of its own (.venv-VERSION).
#
#   scripts/test-python.sh VERSION PYTEST-ARGS...
#
# The interpreter is looked for as pyenv's build ($PYENV_ROOT/versions/VERSION.*, newest first),
# then as pythonVERSION on PATH; each candidate must really run and report that version. When
# none does, the suites are skipped with a message saying where we looked (exit 0): a machine
# without that Python cannot test it. The venv is created once and reinstalled only when
# pyproject.toml changes, like the Makefile's own .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$1
shift

reports() { "$1" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$version')" 2>/dev/null; }

python=""
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
for candidate in $(ls -d "$pyenv_root/versions/$version".* 2>/dev/null | sort -rV) ""; do
    [ -n "$candidate" ] || break
    if [ -x "$candidate/bin/python$version" ] && reports "$candidate/bin/python$version"; then
        python=$candidate/bin/python$version
        break
    fi
done
if [ -z "$python" ] && command -v "python$version" >/dev/null && reports "python$version"; then
    python=$(command -v "python$version")
fi
if [ -z "$python" ]; then
    echo "test-python: SKIPPED CPython $version: not on this machine" \
        "(looked in $pyenv_root/versions/$version.* and for python$version on PATH)"
    exit 0
fi

venv=.venv-$version
if [ ! -x "$venv/bin/python" ]; then
    echo "test-python: creating $venv with $python"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# Only what the suites run here need: the package with COMPAT_EXTRAS, and the test extra's
# runners (pytest, hypothesis, uvloop, ...) without its linters, type stubs and other drivers,
# so that a fresh clone builds these venvs quickly. Versions come from pyproject.toml.
extras=${COMPAT_EXTRAS:-http,grpc,otel}
if [ ! -e "$venv/.installed-test" ] || [ pyproject.toml -nt "$venv/.installed-test" ]; then
    mapfile -t runners < <("$venv/bin/python" - <<'PY'
import tomllib

with open("pyproject.toml", "rb") as f:
    test = tomllib.load(f)["project"]["optional-dependencies"]["test"]
skip = ("interlink[", "mypy", "ruff", "types-", "grpcio-tools", "sqlalchemy", "aiosqlite")
print("\n".join(r for r in test if not r.startswith(skip)))
PY
    )
    "$venv/bin/python" -m pip install --quiet -e ".[$extras]" "${runners[@]}"
    touch "$venv/.installed-test"
fi
echo "test-python: $("$venv/bin/python" -VV | head -1)"
exec "$venv/bin/python" -m pytest "$@"
