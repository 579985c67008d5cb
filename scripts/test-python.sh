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
if [ ! -e "$venv/.installed-test" ] || [ pyproject.toml -nt "$venv/.installed-test" ]; then
    "$venv/bin/python" -m pip install --quiet -e '.[test]'
    touch "$venv/.installed-test"
fi
echo "test-python: $("$venv/bin/python" -VV | head -1)"
exec "$venv/bin/python" -m pytest "$@"
