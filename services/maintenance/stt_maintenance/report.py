"""What one pass did: the summary line it prints and logs, and the counters `loop` mode exposes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prometheus_client import Counter, Gauge, Histogram

REDRIVEN = Counter(
    "stt_maintenance_jobs_redriven_total", "Stale jobs whose trigger was re-emitted, by status.", ["status"]
)
FAILED_STALLED = Counter(
    "stt_maintenance_jobs_failed_stalled_total",
    "Stale jobs failed as `stalled` (re-drive budget spent, or PENDING), by status.",
    ["status"],
)
RENOTIFIED = Counter(
    "stt_maintenance_jobs_renotified_total",
    "Finished jobs with a webhook but no delivery whose `finished` trigger was re-emitted.",
)
DELETED_JOBS = Counter("stt_maintenance_jobs_deleted_total", "Expired jobs deleted (objects and rows).")
DELETED_OBJECTS = Counter("stt_maintenance_objects_deleted_total", "S3 objects deleted with expired jobs.")
ORPHAN_CHUNK_OBJECTS = Counter(
    "stt_maintenance_orphan_chunk_objects_deleted_total",
    "Chunk objects deleted from jobs that failed or were cancelled while being chunked.",
)
EXPIRED_KEYS = Counter(
    "stt_maintenance_idempotency_keys_expired_total", "Expired Idempotency-Key rows deleted."
)
EXPIRED_DELIVERIES = Counter(
    "stt_maintenance_webhook_deliveries_expired_total", "Webhook delivery rows past retention deleted."
)
ERRORS = Counter("stt_maintenance_errors_total", "Jobs or steps a pass could not handle (retried next pass).")
RUNS = Counter(
    "stt_maintenance_runs_total",
    "Maintenance passes by result (ok, skipped, interrupted, error).",
    ["result"],
)
RUN_SECONDS = Histogram(
    "stt_maintenance_run_duration_seconds",
    "Duration of one maintenance pass.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
LAST_SUCCESS = Gauge(
    "stt_maintenance_last_success_timestamp_seconds", "End of the last pass that completed (Unix time)."
)


@dataclass
class Summary:
    redriven: int = 0
    failed_stalled: int = 0
    renotified: int = 0
    deleted_jobs: int = 0
    deleted_objects: int = 0
    orphan_chunk_objects: int = 0
    expired_keys: int = 0
    expired_deliveries: int = 0
    errors: int = 0
    interrupted: bool = False

    def line(self) -> str:
        """`redriven=… failed_stalled=… …`: one line, stable field order, for humans and greps."""
        parts = [f"{name}={value}" for name, value in asdict(self).items() if name != "interrupted"]
        if self.interrupted:
            parts.append("interrupted=true")
        return " ".join(parts)

    def fields(self) -> dict[str, int | bool]:
        return asdict(self)
