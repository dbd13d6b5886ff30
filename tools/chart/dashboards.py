"""Generate the chart's Grafana dashboards (`charts/stt-pipeline/dashboards/*.json`) from Python.

    python tools/chart/dashboards.py          # (re)write the JSON files
    python tools/chart/dashboards.py --check  # exit 1 if a file differs from what this script makes

Plain dictionaries rather than a builder library: four dashboards of time series and stats do not
need one, and the output stays a readable, diffable JSON file that Grafana's sidecar loads as is.
Every query uses the metric names the services export (a chart test checks them against the code);
consumer lag and dead-letter depth come from a Kafka exporter (`kafka_consumergroup_lag`,
`kafka_topic_partition_*_offset`), which the pipeline assumes runs next to Kafka.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parents[2] / "charts" / "stt-pipeline" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
RATE = "$__rate_interval"
DLQ = 'topic=~"stt\\\\..+\\\\.dlq"'  # PromQL string "stt\\..+\\.dlq": the regex stt\..+\.dlq

Json = dict[str, Any]


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[Panel]]]
    variables: list[Json] = field(default_factory=list)
    links_to_others: bool = True


def _variable_datasource() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def _variable_query(name: str, label: str, query: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "current": {},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "options": [],
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> Json:
    targets = [
        {"datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend or "__auto", "refId": chr(65 + i)}
        for i, q in enumerate(panel.queries)
    ]
    body: Json = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
    }
    if panel.kind == "stat":
        body["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    else:
        body["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": True,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        body["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return body


def render(dashboard: Dashboard) -> Json:
    panels: list[Json] = []
    panel_id = 1
    y = 0
    for row_title, row_panels in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            if x + panel.width > 24:
                x = 0
                y += row_height
                row_height = 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    variables = [
        _variable_datasource(),
        _variable_query("namespace", "Namespace", "label_values(stt_messages_total, namespace)"),
        *dashboard.variables,
    ]
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["stt", "speech-to-text"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": ["stt"],
                "asDropdown": True,
                "title": "STT dashboards",
                "includeVars": True,
            }
        ]
        if dashboard.links_to_others
        else [],
        "templating": {"list": variables},
        "panels": panels,
    }


def _quantiles(metric: str, by: str, selector: str, quantiles: tuple[float, ...]) -> list[Query]:
    group = f"le, {by}" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in quantiles
    ]


def overview() -> Dashboard:
    finished = f"stt_jobs_finished_total{{{NS}}}"
    return Dashboard(
        uid="stt-overview",
        title="STT / Overview",
        description="Jobs end to end: volume, outcome, latency, real-time factor, and the REST API.",
        rows=[
            (
                "Jobs",
                [
                    Panel(
                        "Completed jobs",
                        [
                            Query(
                                f"sum(increase(stt_jobs_finished_total{{{NS}, "
                                'status="COMPLETED"}[$__range]))'
                            )
                        ],
                        kind="stat",
                        width=6,
                        height=5,
                    ),
                    Panel(
                        "Failed jobs",
                        [Query(f'sum(increase(stt_jobs_finished_total{{{NS}, status="FAILED"}}[$__range]))')],
                        kind="stat",
                        width=6,
                        height=5,
                    ),
                    Panel(
                        "Submissions",
                        [Query(f"sum(increase(stt_ingest_submissions_total{{{NS}}}[$__range]))")],
                        kind="stat",
                        width=6,
                        height=5,
                    ),
                    Panel(
                        "Failed share of finished jobs",
                        [
                            Query(
                                f'sum(increase(stt_jobs_finished_total{{{NS}, status="FAILED"}}[$__range]))'
                                f" / sum(increase({finished}[$__range]))"
                            )
                        ],
                        kind="stat",
                        unit="percentunit",
                        width=6,
                        height=5,
                    ),
                    Panel(
                        "Jobs finished by status",
                        [Query(f"sum by (status) (rate({finished}[{RATE}]))", "{{status}}")],
                        unit="ops",
                        stack=True,
                    ),
                    Panel(
                        "Failures by error code",
                        [
                            Query(
                                f"sum by (error_code) (rate(stt_jobs_finished_total{{{NS}, "
                                'status!="COMPLETED"}'
                                f"[{RATE}]))",
                                "{{error_code}}",
                            )
                        ],
                        unit="ops",
                        stack=True,
                        description="Failed and cancelled jobs by error code.",
                    ),
                    Panel(
                        "End-to-end duration (submission to completion)",
                        _quantiles("stt_job_duration_seconds", "", NS, (0.5, 0.9, 0.99)),
                        unit="s",
                    ),
                    Panel(
                        "Real-time factor (audio seconds per second of processing)",
                        _quantiles("stt_job_realtime_factor", "", NS, (0.1, 0.5, 0.9)),
                        unit="x",
                        description="Higher is faster; p10 is the slow tail.",
                    ),
                ],
            ),
            (
                "Ingest",
                [
                    Panel(
                        "Submissions by kind and outcome",
                        [
                            Query(
                                f"sum by (kind, outcome) (rate(stt_ingest_submissions_total{{{NS}}}"
                                f"[{RATE}]))",
                                "{{kind}} {{outcome}}",
                            )
                        ],
                        unit="ops",
                        width=8,
                    ),
                    Panel(
                        "Upload volume",
                        [
                            Query(
                                f"sum by (kind) (rate(stt_ingest_upload_bytes_total{{{NS}}}[{RATE}]))",
                                "{{kind}}",
                            )
                        ],
                        unit="Bps",
                        width=8,
                    ),
                    Panel(
                        "Rate-limited submissions",
                        [Query(f"sum(rate(stt_ingest_rate_limited_total{{{NS}}}[{RATE}]))", "rate limited")],
                        unit="ops",
                        width=8,
                    ),
                    Panel(
                        "HTTP requests by status",
                        [
                            Query(
                                f"sum by (status) (rate(stt_http_requests_total{{{NS}}}[{RATE}]))",
                                "{{status}}",
                            )
                        ],
                        unit="reqps",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "HTTP latency p95 by route",
                        _quantiles("stt_http_request_duration_seconds", "route", NS, (0.95,)),
                        unit="s",
                        width=8,
                    ),
                    Panel(
                        "Triggers and URL fetches by outcome",
                        [
                            Query(
                                f"sum by (outcome) (rate(stt_ingest_triggers_total{{{NS}}}[{RATE}]))",
                                "trigger {{outcome}}",
                            ),
                            Query(
                                f"sum by (outcome) (rate(stt_ingest_url_fetches_total{{{NS}}}[{RATE}]))",
                                "url fetch {{outcome}}",
                            ),
                        ],
                        unit="ops",
                        width=8,
                    ),
                ],
            ),
        ],
    )


def stages() -> Dashboard:
    sel = f'{NS}, stage=~"$stage"'
    return Dashboard(
        uid="stt-stages",
        title="STT / Stages",
        description="Each Kafka stage: processing time, outcomes, in-flight, liveness, lag, dead letters.",
        variables=[_variable_query("stage", "Stage", "label_values(stt_messages_total, stage)")],
        rows=[
            (
                "Processing",
                [
                    Panel(
                        "Messages by stage and outcome",
                        [
                            Query(
                                f"sum by (stage, outcome) (rate(stt_messages_total{{{sel}}}[{RATE}]))",
                                "{{stage}} {{outcome}}",
                            )
                        ],
                        unit="ops",
                        description="ok, duplicate (idempotent replay), retry, dlq, error.",
                    ),
                    Panel(
                        "Processing time per message",
                        _quantiles("stt_message_processing_seconds", "stage", sel, (0.5, 0.95)),
                        unit="s",
                    ),
                    Panel(
                        "Messages in flight",
                        [Query(f"sum by (stage) (stt_messages_in_flight{{{sel}}})", "{{stage}}")],
                        width=8,
                    ),
                    Panel(
                        "Seconds since the consumer loop ticked",
                        [
                            Query(
                                f"max by (stage) (time() - "
                                f"stt_consumer_heartbeat_timestamp_seconds{{{sel}}})",
                                "{{stage}}",
                            )
                        ],
                        unit="s",
                        width=8,
                        description="Liveness fails past STT_LIVENESS_TIMEOUT_SECONDS (60 s by default).",
                    ),
                    Panel(
                        "Replicas consuming",
                        [
                            Query(
                                f"count by (stage) (stt_consumer_heartbeat_timestamp_seconds{{{sel}}})",
                                "{{stage}}",
                            )
                        ],
                        width=8,
                    ),
                ],
            ),
            (
                "Kafka (from the Kafka exporter)",
                [
                    Panel(
                        "Consumer-group lag",
                        [
                            Query(
                                "sum by (consumergroup, topic) "
                                '(kafka_consumergroup_lag{consumergroup=~"stt-$stage"})',
                                "{{consumergroup}} ({{topic}})",
                            )
                        ],
                        description="Messages not yet committed by each stage's consumer group.",
                    ),
                    Panel(
                        "Dead-lettered messages",
                        [
                            Query(
                                f"sum by (stage) (increase(stt_messages_total{{{sel}, "
                                'outcome="dlq"}[$__range]))',
                                "{{stage}} dead-lettered in range",
                            ),
                            Query(
                                f"sum by (topic) (kafka_topic_partition_current_offset{{{DLQ}}}"
                                f" - kafka_topic_partition_oldest_offset{{{DLQ}}})",
                                "{{topic}} depth",
                            ),
                        ],
                    ),
                ],
            ),
        ],
    )


def providers() -> Dashboard:
    sel = f'{NS}, provider=~"$provider"'
    return Dashboard(
        uid="stt-providers",
        title="STT / Providers",
        description="Transcription providers: call latency, volume, errors, retries and coverage gaps.",
        variables=[
            _variable_query("provider", "Provider", "label_values(stt_provider_call_seconds_count, provider)")
        ],
        rows=[
            (
                "Calls",
                [
                    Panel(
                        "Provider calls",
                        [
                            Query(
                                f"sum by (provider) (rate(stt_provider_call_seconds_count{{{sel}}}[{RATE}]))",
                                "{{provider}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Call latency",
                        _quantiles("stt_provider_call_seconds", "provider", sel, (0.5, 0.95)),
                        unit="s",
                    ),
                    Panel(
                        "Errors by code",
                        [
                            Query(
                                f"sum by (provider, error_code) (rate(stt_provider_errors_total{{{sel}}}"
                                f"[{RATE}]))",
                                "{{provider}} {{error_code}}",
                            )
                        ],
                        unit="ops",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Chunk retries by reason",
                        [
                            Query(
                                f"sum by (provider, reason) (rate(stt_chunk_retries_total{{{sel}}}[{RATE}]))",
                                "{{provider}} {{reason}}",
                            )
                        ],
                        unit="ops",
                        stack=True,
                        width=8,
                    ),
                    Panel(
                        "Chunks left with a coverage gap",
                        [
                            Query(
                                f"sum by (provider) (increase(stt_coverage_gaps_total{{{sel}}}[$__range]))",
                                "{{provider}}",
                            )
                        ],
                        width=8,
                    ),
                ],
            ),
        ],
    )


def webhooks() -> Dashboard:
    deliveries = f"stt_webhook_deliveries_total{{{NS}}}"
    return Dashboard(
        uid="stt-webhooks",
        title="STT / Webhooks",
        description="Signed webhook delivery: attempts by outcome, latency, retries and the delivery loop.",
        rows=[
            (
                "Delivery",
                [
                    Panel(
                        "Attempts by outcome",
                        [Query(f"sum by (outcome) (rate({deliveries}[{RATE}]))", "{{outcome}}")],
                        unit="ops",
                        stack=True,
                        description="succeeded, retry, gone (410), exhausted, rejected, superseded.",
                    ),
                    Panel(
                        "Successful share of attempts",
                        [
                            Query(
                                f"sum(rate(stt_webhook_deliveries_total{{{NS}, "
                                f'outcome="succeeded"}}[{RATE}]))'
                                f" / sum(rate({deliveries}[{RATE}]))",
                                "succeeded",
                            )
                        ],
                        unit="percentunit",
                    ),
                    Panel(
                        "Attempt latency",
                        _quantiles("stt_webhook_attempt_duration_seconds", "result", NS, (0.5, 0.95)),
                        unit="s",
                    ),
                    Panel(
                        "Finished-job events seen by the notifier",
                        [
                            Query(
                                f"sum by (outcome) (rate(stt_webhook_events_total{{{NS}}}[{RATE}]))",
                                "{{outcome}}",
                            )
                        ],
                        unit="ops",
                    ),
                    Panel(
                        "Attempts in flight",
                        [Query(f"sum(stt_webhook_attempts_in_flight{{{NS}}})", "in flight")],
                        width=12,
                    ),
                    Panel(
                        "Seconds since the delivery loop ticked",
                        [
                            Query(
                                f"max by (pod) (time() - "
                                f"stt_webhook_loop_heartbeat_timestamp_seconds{{{NS}}})",
                                "{{pod}}",
                            )
                        ],
                        unit="s",
                        width=12,
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {"overview": overview, "stages": stages, "providers": providers, "webhooks": webhooks}


def rendered() -> dict[str, str]:
    return {
        f"{name}.json": json.dumps(render(build()), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the chart's Grafana dashboards.")
    parser.add_argument("--check", action="store_true", help="fail if the committed files are out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for filename, text in rendered().items():
        path = args.out / filename
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(filename)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python tools/chart/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
