# headwater: one Makefile for everything. `make demo` and `make test` work on a fresh
# machine: they create the venv, install, and start the local servers themselves.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := dev,bench
# The venv is reinstalled when pyproject.toml or the extras change.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo '$(EXTRAS)') | cksum | cut -d' ' -f1)
SERVICES := $(PY) tests/servers/services.py

.PHONY: help venv services services-down status test test-unit lint typecheck demo bench bench-smoke bench-markers bench-stores soak compose-check clean

help:
	@echo "make demo           run a real pipeline end to end (S3 -> SQS -> Kafka -> tasks)"
	@echo "make test           the whole suite against real Kafka and emulators"
	@echo "make lint           ruff + mypy (strict)"
	@echo "make bench          the benchmark (needs make services); bench-smoke: tiny volumes"
	@echo "make bench-markers  the markers and restore rows alone (1M and 10M finished runs)"
	@echo "make bench-stores   rocksdict vs LMDB on the run markers' workload (no services)"
	@echo "make soak           minutes of pauses, kills and broker bounces under load"
	@echo "make services       start Kafka (KRaft) and moto in the background"
	@echo "make services-down  stop them"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	rm -f $(VENV)/.installed-*
	touch $@

services: venv
	$(SERVICES) up

services-down:
	@if [ -x $(PY) ]; then $(SERVICES) down; fi

status: venv
	$(SERVICES) status

# bench-smoke first (seconds; it checks that every built row yields a figure, never a
# speed), so that pytest's summary is the last thing the suite prints; the 15 slowest
# tests are listed before it (where make test's time goes).
test: venv lint services bench-smoke
	$(PY) -m pytest -q --durations=15

test-unit: venv
	$(PY) -m pytest -q tests/unit

typecheck: venv
	@mkdir -p build/typecheck/headwater
	@for d in runner bridges schemas; do ln -sfn ../../../$$d build/typecheck/headwater/$$d; done
	$(VENV)/bin/mypy -p headwater.runner -p headwater.bridges

lint: venv typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check runner bridges

demo: venv
	$(PY) examples/demo.py

bench: venv services
	$(PY) -m bench.run

bench-smoke: venv services
	$(PY) -m bench.run --smoke

# The embedded stores the run table's markers could live in (issue 11), same workload each.
bench-markers: venv services
	$(PY) -m bench.markers --counts 1000000,10000000

bench-stores: venv
	$(PY) -m bench.stores --markers 1000000

# Minutes, not in CI: two processes under load while pauses, kills and broker bounces come
# and go; exits non-zero on any duplicate or lost event.
# `docker compose config` on the compose files, with Docker Compose built from the Go
# module proxy when no `docker compose` is installed (not in CI: a few minutes' build).
COMPOSE_VERSION := v5.6.0
compose-check:
	@if docker compose version >/dev/null 2>&1; then c="docker compose"; else \
	  c=.hw/bin/docker-compose; if [ ! -x $$c ]; then \
	    mkdir -p .hw/bin .hw/compose-src && GOFLAGS=-mod=mod go mod download -json github.com/docker/compose/v5@$(COMPOSE_VERSION) >/dev/null && \
	    rm -rf .hw/compose-src && cp -r $$(go env GOMODCACHE)/github.com/docker/compose/v5@$(COMPOSE_VERSION) .hw/compose-src && \
	    chmod -R u+w .hw/compose-src && (cd .hw/compose-src && go build -o ../bin/docker-compose ./cmd); fi; fi; \
	for f in compose/docker-compose.yml compose/docker-compose.roles.yml; do $$c -f $$f config -q && echo "$$f: ok"; done

soak: venv services
	$(PY) -m soak.run

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
