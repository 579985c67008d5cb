# The two commands a fresh machine needs: `make demo` and `make test`. Both create .venv and
# install what they use, so nothing has to be set up by hand first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint types pytest bench services install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/interlink demo

services:
	bash scripts/ensure-services.sh

LINTED := src tests $(wildcard benchmarks examples)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

types: $(VENV)/.installed-test
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed-test services
	$(PY) -m pytest -q

test: lint types pytest

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# Regenerate the example gRPC code checked in under examples/proto (grpcio-tools is in the test extra).
.PHONY: proto
proto: $(VENV)/.installed-test
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. examples/proto/food.proto
