# Developer and CI entry points. See SPEC "Commands".
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv deps test lint run bench clean distclean

# The venv is (re)installed only when setup.cfg/pyproject.toml change.
venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

deps:
	@bash tools/bootstrap.sh

test: deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check gateway tests tools bench
	$(VENV)/bin/mypy

run: deps venv
	$(PY) tools/run_local.py

bench: deps venv
	$(PY) -m bench

clean:
	rm -rf build .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
