# Developer and CI entry points (README.md, "Commands").
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN_STAMP := $(VENV)/.run-stamp
PYTEST_ARGS ?=
# make test runs the suite in this many worker processes (pytest-xdist; 0: none)
PYTEST_WORKERS ?= 2
# make bench                 gateway (plain and durable) vs nginx+nchan vs naive, charts in
#                            docs/bench/, then MODE=connect's and MODE=durable's benches (~7 min)
# make bench MODE=connect    CPU per new stream: gateway vs nginx+nchan vs a bare aiohttp
#                            handler (bench.connect), rows to docs/bench/connect.jsonl (~1 min)
# make bench MODE=durable    reconnect storm after a restart (bench.storm), job-state snapshot
#                            storm (bench.snapshot_storm), HTTP publish into Redis with and
#                            without key+seq, beside nchan (bench.publish_http) (~4 min);
#                            rows to docs/bench/jobs.jsonl
# make bench MODE=scale      50,000 streams, several client processes, gateway workers: 3,
#                            set beside the capacity model's prediction (~5 min)
# make bench MODE=units      unit costs for the capacity model (.run/bench/unit-costs.json)
# BENCH_ARGS="..."           extra arguments, e.g. BENCH_ARGS="--streams 3000"
# Every mode ends with `python -m bench.readme`: README's figures regenerated from the
# records (docs/bench/), even after a bench that failed a bound (make still fails then).
MODE       ?= compare
BENCH_ARGS ?=

.PHONY: venv deps deps-run test lint run image bench bench-cluster chaos clean distclean

# The venv is (re)installed only when setup.cfg/pyproject.toml change.
venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $(STAMP)

# make run needs only the gateway's own dependencies (no test extras: no
# Playwright, matplotlib, mypy ...); a venv that has them already is used as is.
$(RUN_STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade
	@if [ $(STAMP) -nt setup.cfg ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  $(PY) -m pip install --disable-pip-version-check -q -e . ; fi
	@touch $(RUN_STAMP)

deps:
	@bash tools/bootstrap.sh test

# only Redis, PostgreSQL and python3-venv: no Chromium, nginx, Prometheus, Node.js
deps-run:
	@bash tools/bootstrap.sh run

test: deps venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check gateway tests tools bench
	$(VENV)/bin/mypy

# the banner also says how long make run took in all (installs included)
run: export MAKE_RUN_STARTED := $(shell date +%s.%N)
run: deps-run $(RUN_STAMP)
	$(PY) -m tools.run_local

# The container image with podman, all its state under .run/podman (docs/deploy.md)
image:
	@bash tools/bootstrap.sh image
	$(PYTHON) -m tools.image build

bench: deps venv
	@status=0; case "$(MODE)" in \
	  compare) $(PY) -m bench $(BENCH_ARGS) && $(PY) -m bench.connect && \
	           $(PY) -m bench.storm && \
	           $(PY) -m bench.snapshot_storm && $(PY) -m bench.publish_http ;; \
	  connect) $(PY) -m bench.connect $(BENCH_ARGS) ;; \
	  durable) $(PY) -m bench.storm && $(PY) -m bench.snapshot_storm && \
	           $(PY) -m bench.publish_http ;; \
	  scale)   $(PY) -m bench --scale $(BENCH_ARGS) ;; \
	  units)   $(PY) -m bench.unitcosts $(BENCH_ARGS) ;; \
	  *) echo "MODE must be compare, connect, durable, scale or units" >&2; exit 2 ;; \
	esac || status=$$?; \
	$(PY) -m bench.readme || status=$$?; exit $$status

# Redis Cluster: where SPUBLISH/PUBLISH land, gateway CPU per delivery (docs/bench/cluster.md)
bench-cluster: deps venv
	$(PY) -m bench.cluster $(BENCH_ARGS)

# Seeded fault injection (tools/chaos): make chaos DURATION=1800 SEED=7 PROFILE=single|cluster
# HERD=same|spread (storm tabs leave on one event or each on its own), BURST_MAX=events/storm
DURATION  ?= 600
SEED      ?= $(shell echo $$RANDOM)
PROFILE   ?= single
CLIENTS   ?= 100
HERD      ?= same
BURST_MAX ?= 200
chaos: deps venv
	$(PY) -m tools.chaos --seed $(SEED) --duration $(DURATION) --profile $(PROFILE) \
	  --clients $(CLIENTS) --herd $(HERD) --burst-max $(BURST_MAX)

clean:
	-@test ! -d .run/podman || $(PYTHON) -m tools.image clean
	rm -rf build .run .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
