# The two commands a fresh machine needs: `make demo` and `make test`. Both create .venv and
# install what they use, so nothing has to be set up by hand first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint types pytest compat compat-uvloop compat-pythons bench services install clean

# Debian's python3 makes venvs only with its python3-venv package: installed here when missing.
$(PY):
	$(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || { rm -rf $(VENV); bash scripts/apt-install.sh python3-venv; }
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-system: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[system]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

# The reference system on embedded defaults: six services, a stream of orders, menu killed and
# brought back; prints the before/during/after table and stops everything.
demo: $(VENV)/.installed-system
	$(VENV)/bin/interlink demo --scenario menu-outage

services:
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh

LINTED := src tests $(wildcard benchmarks examples)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

types: $(VENV)/.installed-test
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed-test services
	$(PY) -m pytest -q --durations=15

# The suites that carry the event-loop and interpreter-sensitive code, run again on every other
# CPython this machine has (each in its own .venv-X.Y; a missing one is skipped with a message)
# and on uvloop.
COMPAT_SUITES := tests/resilience tests/http tests/grpc tests/test_event_loop.py
COMPAT_PYTHONS := 3.12 3.13

compat: compat-uvloop compat-pythons

compat-uvloop: $(VENV)/.installed-test
	INTERLINK_TEST_LOOP=uvloop $(PY) -m pytest -q -p no:cacheprovider $(COMPAT_SUITES)

compat-pythons:
	@for version in $(COMPAT_PYTHONS); do \
		bash scripts/test-python.sh $$version -q -p no:cacheprovider $(COMPAT_SUITES) || exit 1; \
	done

test: lint types pytest compat

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Regenerate the example gRPC code checked in under examples/proto (grpcio-tools is in the test extra).
.PHONY: proto
proto: $(VENV)/.installed-test
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. examples/proto/food.proto
