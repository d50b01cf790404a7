# `make demo` and `make test` bootstrap their own virtualenv (.venv) on first use.
# Another interpreter: make test PYTHON=python3.12 VENV=.venv312
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean system

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/shadowdiff demo

lint: $(STAMP)
	$(BIN)/ruff check src tests addons bench
	$(BIN)/ruff format --check src tests addons bench
	$(BIN)/mypy src
	$(BIN)/lint-imports

# Real parts the tests use, installed when missing: Debian's headless chromium (report and
# dashboard), nginx (the fleet in front of two proxies) and PostgreSQL (the fleet's shared
# store; the tests start a throwaway cluster of their own unless SHADOWDIFF_TEST_PG is set),
# promtool from Debian's prometheus package, without its recommends (the node exporter): the
# shipped rules are checked and unit-tested; the tests run no Prometheus server,
# and two released versions of Datasette for the release review (.ci/review-services).
system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	bare=""; command -v promtool >/dev/null || bare="prometheus"; \
	if [ -n "$$missing$$bare" ]; then \
	  echo "installing Debian packages for the tests:$$missing $$bare"; \
	  apt-get update -q \
	  && { [ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; } \
	  && { [ -z "$$bare" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$bare; }; \
	fi
	@.ci/review-services

# CI measures coverage once, on its 3.12 run (sys.monitoring makes it cheap there), and runs
# the same tests on 3.11 without it: `make test COVERAGE=`.
COVERAGE ?= --cov=shadowdiff --cov-report=term-missing:skip-covered

test: lint system
	$(BIN)/pytest $(COVERAGE) -q

bench: $(STAMP) system
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python bench/live_overhead.py
	$(BIN)/python bench/tap_hooks.py
	$(BIN)/python bench/compare_speed.py
	$(BIN)/python bench/replay_speed.py
	$(BIN)/python bench/fleet_throughput.py
	$(BIN)/python bench/soak.py
	$(BIN)/python bench/judgement.py
	$(BIN)/python bench/verdict_scale.py
	$(BIN)/python bench/rollout.py

clean:
	rm -rf .venv .venv312 .pytest_cache .mypy_cache .ruff_cache .coverage* demo.db*
