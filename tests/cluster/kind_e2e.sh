#!/usr/bin/env bash
# End-to-end on a throwaway kind cluster: build the images, create the cluster, load the images,
# install the chart with the dev values (in-cluster Kafka, MinIO, Postgres, Redis), create an API key,
# submit a recording, and wait until the job is COMPLETED. Prints the transcript.
#
# Needs docker, kind, kubectl and helm, and network access for the base and dev-instance images
# (python:3.11-slim, apache/kafka, minio/minio, postgres, redis). It cannot run on the project's
# offline machines; `make test` checks the chart there without a cluster (tests/chart).
#
#   tests/cluster/kind_e2e.sh                 # build, install, test, delete the cluster
#   KEEP=1 tests/cluster/kind_e2e.sh          # leave the cluster running afterwards
#   SKIP_BUILD=1 TAG=dev tests/cluster/kind_e2e.sh   # reuse images built by `make images`
#   AUDIO=path/to/file.wav tests/cluster/kind_e2e.sh # default: a sentence from espeak-ng, else a tone
set -euo pipefail

cd "$(dirname "$0")/../.."
CLUSTER=${CLUSTER:-stt-e2e}
TAG=${TAG:-e2e}
NS=${NS:-stt}
RELEASE=stt-pipeline
TIMEOUT=${TIMEOUT:-600}
LOCAL_PORT=${LOCAL_PORT:-18000}
SERVICES=(ingest chunker transcriber merger notifier maintenance)
WORK=$(mktemp -d)
PORT_FORWARD_PID=""

log() { printf '\n==> %s\n' "$*" >&2; }

cleanup() {
  status=$?
  if [ -n "$PORT_FORWARD_PID" ]; then kill "$PORT_FORWARD_PID" 2>/dev/null || true; fi
  if [ "$status" -ne 0 ]; then
    log "failed; pods and recent logs:"
    kubectl -n "$NS" get pods -o wide || true
    for s in "${SERVICES[@]}"; do
      kubectl -n "$NS" logs "deploy/$RELEASE-$s" --tail=40 2>/dev/null || true
    done
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    log "keeping cluster $CLUSTER (kind delete cluster --name $CLUSTER)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT

for tool in docker kind kubectl helm curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building images (tag $TAG)"
  make images IMAGE_TAG="$TAG"
fi

log "creating kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "loading images"
for s in "${SERVICES[@]}"; do
  kind load docker-image "stt-$s:$TAG" --name "$CLUSTER"
done

log "installing the chart (dev values)"
# --wait also waits for the post-install hooks: migrations and topic/bucket creation.
helm upgrade --install "$RELEASE" charts/stt-pipeline --namespace "$NS" --create-namespace \
  -f charts/stt-pipeline/values-dev.yaml \
  --set image.tag="$TAG" --set image.pullPolicy=IfNotPresent \
  --wait --timeout 15m
for s in ingest chunker transcriber merger notifier; do
  kubectl -n "$NS" rollout status "deploy/$RELEASE-$s" --timeout=300s
done

log "creating an API key"
API_KEY=$(kubectl -n "$NS" exec "deploy/$RELEASE-ingest" -- \
  python -m stt_ingest keys create --name e2e --tenant e2e --json \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

kubectl -n "$NS" port-forward "svc/$RELEASE-ingest" "$LOCAL_PORT:8000" >/dev/null 2>&1 &
PORT_FORWARD_PID=$!
for _ in $(seq 1 30); do
  curl -fsS "http://127.0.0.1:$LOCAL_PORT/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "http://127.0.0.1:$LOCAL_PORT/readyz" >/dev/null

AUDIO=${AUDIO:-}
if [ -z "$AUDIO" ]; then
  AUDIO="$WORK/sample.wav"
  if command -v espeak-ng >/dev/null; then
    espeak-ng -w "$AUDIO" "The quick brown fox jumps over the lazy dog. Kubernetes runs the pipeline."
  else
    # No speech synthesiser: a tone still exercises every stage (the transcript may be empty).
    python3 - "$AUDIO" <<'PY'
import math, struct, sys, wave
with wave.open(sys.argv[1], "wb") as out:
    out.setnchannels(1); out.setsampwidth(2); out.setframerate(16000)
    out.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000))) for i in range(16000 * 5)))
PY
  fi
fi

log "submitting $AUDIO"
JOB_ID=$(curl -fsS -H "X-API-Key: $API_KEY" -F "file=@$AUDIO" "http://127.0.0.1:$LOCAL_PORT/api/v1/transcribe" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
echo "job $JOB_ID"

deadline=$((SECONDS + TIMEOUT))
status=""
while [ $SECONDS -lt $deadline ]; do
  status=$(curl -fsS -H "X-API-Key: $API_KEY" "http://127.0.0.1:$LOCAL_PORT/api/v1/jobs/$JOB_ID" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["status"])')
  echo "status: $status"
  case "$status" in
    COMPLETED) break ;;
    FAILED | CANCELLED) echo "job ended $status" >&2; exit 1 ;;
  esac
  sleep 5
done
[ "$status" = COMPLETED ] || { echo "job not COMPLETED within ${TIMEOUT}s (last: $status)" >&2; exit 1; }

log "transcript"
curl -fsS -H "X-API-Key: $API_KEY" "http://127.0.0.1:$LOCAL_PORT/api/v1/jobs/$JOB_ID/result?format=txt"
echo
log "kind end-to-end: OK"
