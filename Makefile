# Every target bootstraps what it needs on a fresh clone: uv (into .tools if
# the machine has none), the locked virtual environment, and TimescaleDB.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
CONFIG ?= config.toml
SIM_LISTEN ?= 127.0.0.1:9100
SIM_PROTOCOL ?= binance

.PHONY: run test fuzz bench lint fmt sim timescaledb chromium prometheus clean chaos dist

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install -q uv==0.13.9

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras
	touch $@

# The wheel README's service section installs into /opt/candled.
dist: .venv/.synced
	$(UV) build --wheel --out-dir dist

timescaledb:
	bash scripts/install-timescaledb.sh

# Headless Chromium for the coverage page's browser test.
chromium:
	bash scripts/install-chromium.sh

# promtool and the Prometheus server for the alerting rules' tests.
prometheus:
	bash scripts/install-prometheus.sh

# The simulated exchange and the daemon (with its embedded database) together;
# Ctrl-C stops all of them.
run: .venv/.synced timescaledb
	@trap 'kill $$sim 2>/dev/null; wait' EXIT INT TERM; \
	$(PY) -m candled sim --listen $(SIM_LISTEN) & sim=$$!; \
	$(PY) -m candled run --config $(CONFIG)

sim: .venv/.synced
	$(PY) -m candled sim --listen $(SIM_LISTEN) --protocol $(SIM_PROTOCOL)

# Two workers, a test file each: the end-to-end tests mostly wait on the clock.
# Files in collection order: xdist would otherwise hand out the files with the
# most tests first, and so the slow end-to-end files (one to four tests each)
# last, where the worker that draws the longest one runs on alone.
test: .venv/.synced timescaledb chromium prometheus
	.venv/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The fuzz tests (codecs, validator, scenario loader, spool reader, config loader) with FUZZ_EXAMPLES examples
# each, not the bounded number `make test` runs; statistics say how many ran, how fast.
FUZZ_EXAMPLES ?= 2000
FUZZ_WORKERS ?= 2
fuzz: .venv/.synced
	HYPOTHESIS_PROFILE=fuzz FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) .venv/bin/pytest -q -n $(FUZZ_WORKERS) \
		--hypothesis-show-statistics tests/test_fuzz_codecs.py tests/test_fuzz_validate.py \
		tests/test_fuzz_scenario.py tests/test_config_mutations.py \
		tests/test_spool_hostile.py -k "not hostile_record and not failed_quarantine"

# `make bench BENCH=growth BENCH_SIZES=1M,10M,50M`: some benchmarks, store sizes for growth.
BENCH ?=
BENCH_SIZES ?=
bench: .venv/.synced timescaledb
	$(if $(filter depth,$(BENCH)),sh bench/ccxt-env.sh)
	$(PY) -m bench $(BENCH) $(if $(BENCH_SIZES),--sizes $(BENCH_SIZES))

# Kills, database outages and venue faults at random for CHAOS_MINUTES, then
# the store against the simulator's truth (not part of `make test`).
CHAOS_MINUTES ?= 11
chaos: .venv/.synced timescaledb
	$(PY) scripts/chaos.py --minutes $(CHAOS_MINUTES)

lint: .venv/.synced
	.venv/bin/ruff check daemon sim tests bench scripts
	.venv/bin/ruff format --check daemon sim tests bench scripts
	.venv/bin/mypy
	.venv/bin/lint-imports

fmt: .venv/.synced
	.venv/bin/ruff check --fix daemon sim tests bench scripts
	.venv/bin/ruff format daemon sim tests bench scripts

clean:
	rm -rf .venv .tools var dist .pytest_cache .mypy_cache .ruff_cache
