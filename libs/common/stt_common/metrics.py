"""Prometheus metrics shared by every stage (`stt_` prefix, units in names, bounded labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "stt_messages_total",
    "Messages handled by a stage, by outcome (ok, duplicate, retry, dlq, error).",
    ["stage", "outcome"],
)
MESSAGE_SECONDS = Histogram(
    "stt_message_processing_seconds",
    "Time a stage spent on one message, retries included.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
IN_FLIGHT = Gauge("stt_messages_in_flight", "Messages a stage is handling now.", ["stage"])
LOOP_HEARTBEAT = Gauge(
    "stt_consumer_heartbeat_timestamp_seconds", "Last time the consumer loop ticked (Unix time).", ["stage"]
)
JOBS_FINISHED = Counter(
    "stt_jobs_finished_total", "Jobs that reached a terminal status.", ["status", "error_code"]
)
