# The README's two commands are `make demo` and `make test`; everything else is a step they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PY) -m stt_devstack
PACKAGES := libs/common services/ingest services/chunker services/transcriber services/merger services/notifier services/maintenance tools/devstack tools/cli clients/python

.PHONY: install lock up down status demo test lint typecheck bench bench-pipeline bench-chunker bench-fanout bench-quality bench-follow clean

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
	@# Starting from the current lock keeps every pin that still fits: adding one package moves no other.
	cp requirements.lock requirements.lock.tmp
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
	$(VENV)/bin/mypy libs/common/stt_common services/*/stt_* tools/devstack/stt_devstack tools/cli/stt_cli clients/python/stt_client

# Benchmarks print their figures and write them to bench/results/<name>.json. Not part of `make test`.
bench: bench-pipeline bench-chunker bench-fanout bench-ingest-upload bench-ingest-get bench-quality

bench-pipeline bench-chunker bench-fanout bench-quality: bench-%: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.$(subst pipeline,pipeline_e2e,$*)

# Time to transcript against its floor (decode + one provider latency + merge), 1 to 16 transcribers.
.PHONY: bench-latency
bench-latency: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.latency

# WAV against FLAC chunks, step by step on an hour of speech (bytes, CPU of cut, S3 put/get, decode).
.PHONY: bench-chunk-format
bench-chunk-format: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.chunk_format

.PHONY: bench-ingest-upload bench-ingest-get test-chaos

bench-ingest-upload bench-ingest-get: bench-ingest-%: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.ingest_$*

# 1,000 Server-Sent Events followers held by one ingest: RSS, the shared poller's query rate, delays.
bench-follow: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.follow

# Load: a submission storm, a backlog drained by 1/2/4 transcribers, the rate limit across two ingests.
.PHONY: bench-storm bench-backlog bench-limiter

bench-storm bench-backlog bench-limiter: bench-%: install
	$(STACK) system-deps
	PYTHONPATH=. $(PY) -m bench.$*

# Fault injection at full scale: every scenario of tests/chaos/driver.py on a private stack of its
# own (STT_CHAOS_PORT_BASE, default 17000); the table goes to bench/results/chaos.json. SCENARIOS=…
# runs some of them. A short seeded version runs inside `make test` (tests/chaos/test_chaos.py).
test-chaos: install
	$(STACK) system-deps
	STT_CHAOS=full PYTHONPATH=. $(PY) -m tests.chaos.driver $(SCENARIOS)

clean: down
	rm -rf .stack

# Container images, one per service, all from the one Dockerfile at the repository root (built from
# the root), each with its build arguments: SERVICE, then IMAGE_ARGS_<name> (skaffold.yaml has the same).
# BASE_IMAGE=… builds on a local Python 3.11 base (docs/kubernetes.md); DOCKER_BUILD_ARGS passes more.
IMAGE_SERVICES := ingest chunker transcriber merger notifier maintenance
IMAGE_ARGS_ingest := PORT=8000 COMMAND=serve
IMAGE_ARGS_chunker := PORT=8082 APT_PACKAGES=ffmpeg
IMAGE_ARGS_transcriber := PORT=8083
IMAGE_ARGS_merger := PORT=8084
IMAGE_ARGS_notifier := PORT=8085
IMAGE_ARGS_maintenance := PORT=8086 COMMAND=run
IMAGE_PREFIX ?= stt-
IMAGE_TAG ?= dev
DOCKER ?= docker
DOCKER_BUILD_ARGS ?=

.PHONY: images chart-test $(addprefix image-,$(IMAGE_SERVICES))

images: $(addprefix image-,$(IMAGE_SERVICES))

$(addprefix image-,$(IMAGE_SERVICES)): image-%:
	$(DOCKER) build $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) --build-arg SERVICE=$* \
		$(addprefix --build-arg ,$(IMAGE_ARGS_$*)) $(DOCKER_BUILD_ARGS) -t $(IMAGE_PREFIX)$*:$(IMAGE_TAG) .

# The chart, manifest and dashboard checks alone (they are also part of `make test`).
chart-test: install
	$(PY) -m pytest -q tests/chart
