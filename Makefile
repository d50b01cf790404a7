# `make demo` and `make test` bootstrap their own virtualenv (.venv) on first use.
# Another interpreter: make test PYTHON=python3.12 VENV=.venv312
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean browser

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

# The report tests open the HTML report in Debian's headless chromium.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the report tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: lint browser
	$(BIN)/pytest --cov=shadowdiff --cov-report=term-missing:skip-covered -q

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python bench/live_overhead.py
	$(BIN)/python bench/tap_hooks.py
	$(BIN)/python bench/compare_speed.py

clean:
	rm -rf .venv .venv312 .pytest_cache .mypy_cache .ruff_cache .coverage* demo.db*
