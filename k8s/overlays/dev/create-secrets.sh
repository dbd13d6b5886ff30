#!/usr/bin/env bash
# Create the dev overlay's Secrets with random credentials (nothing secret is committed):
#   stt-dev-credentials  passwords of the in-cluster Postgres and Redis, MinIO's key pair
#   stt-database         the pipeline's database URL (same Postgres password)
#   stt-redis            ingest's Redis URL (same Redis password)
# Idempotent: existing Secrets are kept, so the instances' data stays reachable.
#   k8s/overlays/dev/create-secrets.sh [namespace]      (default: stt-dev)
set -euo pipefail
NS=${1:-stt-dev}
kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
if kubectl -n "$NS" get secret stt-dev-credentials >/dev/null 2>&1; then
  echo "secrets exist in $NS; leaving them"
  exit 0
fi
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
PG=$(random)
REDIS=$(random)
kubectl -n "$NS" create secret generic stt-dev-credentials \
  --from-literal=postgres-password="$PG" --from-literal=redis-password="$REDIS" \
  --from-literal=access-key-id="stt$(python3 -c 'import secrets; print(secrets.token_hex(6))')" \
  --from-literal=secret-access-key="$(random)"
kubectl -n "$NS" create secret generic stt-database \
  --from-literal=database-url="postgresql+asyncpg://stt:$PG@stt-postgres:5432/stt"
kubectl -n "$NS" create secret generic stt-redis --from-literal=redis-url="redis://:$REDIS@stt-redis:6379/0"
echo "created stt-dev-credentials, stt-database, stt-redis in $NS"
