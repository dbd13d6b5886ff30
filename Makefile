# The README's two commands are `make demo` and `make test`; everything else is a step they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m stt_devstack
PACKAGES := libs/common services/ingest services/chunker services/transcriber services/merger services/notifier tools/devstack

.PHONY: install lock up down status demo test lint typecheck bench bench-pipeline bench-chunker bench-fanout clean

# A stamp file makes `make install` idempotent: it reruns only when the lock or a manifest changes.
$(VENV)/.installed: requirements.lock pyproject.toml $(addsuffix /pyproject.toml,$(PACKAGES))
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || uv venv --quiet --python $(PYTHON) $(VENV)
	uv pip install --quiet --python $(PY) --require-hashes -r requirements.lock
	uv pip install --quiet --python $(PY) --no-deps $(addprefix -e ,$(PACKAGES))
	@touch $@

install: $(VENV)/.installed

# Regenerate the hashed lock. Workspace packages are installed editable and kept out of it;
# the lock holds names, versions and hashes only (no registry addresses).
lock:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	uv pip compile pyproject.toml --group dev --universal --generate-hashes --python-version 3.11 \
		--no-header --quiet -o requirements.lock.tmp
	awk '/^-e /{skip=1; next} /^[^ ]/{skip=0} !skip' requirements.lock.tmp > requirements.lock && rm requirements.lock.tmp
	@! grep -q '://' requirements.lock || { echo "requirements.lock records an address" >&2; exit 1; }

up: install
	$(STACK) up

down: install
	$(STACK) down

status: install
	$(STACK) status

demo: up
	$(PY) -m stt_devstack demo

test: install
	$(STACK) system-deps
	$(PY) -m pytest -ra tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy libs/common/stt_common services/*/stt_* tools/devstack/stt_devstack

# Benchmarks print their figures and write them to bench/results/<name>.json. Not part of `make test`.
bench: bench-pipeline bench-chunker bench-fanout

bench-pipeline bench-chunker bench-fanout: bench-%: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.$(subst pipeline,pipeline_e2e,$*)

clean: down
	rm -rf .stack
