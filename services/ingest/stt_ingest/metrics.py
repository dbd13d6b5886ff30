"""Ingest's own Prometheus metrics (`stt_` prefix, bounded labels: route templates, never ids)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "stt_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "stt_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SUBMISSIONS = Counter(
    "stt_ingest_submissions_total", "Job submissions, by kind (upload, url) and outcome.", ["kind", "outcome"]
)
UPLOAD_BYTES = Counter("stt_ingest_upload_bytes_total", "Media bytes stored by ingest, by kind.", ["kind"])
RATE_LIMITED = Counter("stt_ingest_rate_limited_total", "Submissions refused by the rate limit.")
TRIGGERS = Counter(
    "stt_ingest_triggers_total", "Kafka triggers ingest produced, by topic and outcome.", ["topic", "outcome"]
)
URL_FETCHES = Counter("stt_ingest_url_fetches_total", "Background URL downloads, by outcome.", ["outcome"])
