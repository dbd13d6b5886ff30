"""Dashboards and alerts query metrics that exist: every `stt_*` name is exported by the code, and the
rest come from the exporters the chart documents (Kafka exporter, kube-state-metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, FULL_VALUES, REPO, Render

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# Metrics of exporters the README names as assumptions, not of our code.
EXTERNAL_METRICS = frozenset(
    {
        "kafka_consumergroup_lag",
        "kafka_topic_partition_current_offset",
        "kafka_topic_partition_oldest_offset",
        "kube_job_status_failed",
    }
)
_METRIC = re.compile(r"\b((?:stt|kafka|kube)_[a-z0-9_]+)")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_DECLARED = re.compile(r"""(?:Counter|Gauge|Histogram|Summary)\(\s*["']([a-z0-9_]+)["']""")


def exported_metrics() -> set[str]:
    """Names declared with prometheus_client in services/ and libs/ (read from the source, not
    imported: importing every service would register all their metrics in one process)."""
    names: set[str] = set()
    for root in (REPO / "services", REPO / "libs"):
        for path in root.rglob("*.py"):
            names.update(_DECLARED.findall(path.read_text()))
    return names


def dashboard_queries() -> dict[str, list[str]]:
    queries: dict[str, list[str]] = {}
    for path in DASHBOARDS:
        body = json.loads(path.read_text())
        exprs = [t["expr"] for p in body["panels"] for t in p.get("targets", [])]
        exprs += [v["query"]["query"] for v in body["templating"]["list"] if isinstance(v.get("query"), dict)]
        queries[path.name] = exprs
    return queries


def alert_rules(render: Render) -> list[dict[str, Any]]:
    (rule,) = render((FULL_VALUES,)).of_kind("PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _unknown(expr: str, exported: set[str]) -> set[str]:
    used = set(_METRIC.findall(expr))
    assert used, f"no metric in {expr!r}"
    missing = set()
    for name in used:
        if name in EXTERNAL_METRICS:
            continue
        if name not in exported and _HISTOGRAM_SUFFIX.sub("", name) not in exported:
            missing.add(name)
    return missing


def test_the_code_exports_the_metrics_design_names() -> None:
    exported = exported_metrics()
    assert {
        "stt_messages_total",
        "stt_message_processing_seconds",
        "stt_messages_in_flight",
        "stt_jobs_finished_total",
        "stt_provider_call_seconds",
        "stt_http_requests_total",
        "stt_webhook_deliveries_total",
    } <= exported


@pytest.mark.parametrize("dashboard", [p.name for p in DASHBOARDS])
def test_dashboard_queries_use_exported_metrics(dashboard: str) -> None:
    exported = exported_metrics()
    for expr in dashboard_queries()[dashboard]:
        assert not _unknown(expr, exported), expr


def test_alert_queries_use_exported_metrics(render: Render) -> None:
    exported = exported_metrics()
    rules = alert_rules(render)
    assert len(rules) >= 8
    for rule in rules:
        assert not _unknown(rule["expr"], exported), rule["alert"]


def test_dashboards_are_generated_from_the_script() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "chart" / "dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_dashboards_cover_the_asked_views() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert names == {"overview", "stages", "providers", "webhooks"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        body = json.loads(path.read_text())
        ids = [p["id"] for p in body["panels"]]
        assert len(set(ids)) == len(ids), path.name
        for panel in body["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}"


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make test` installs Debian's `prometheus` package (system-deps)"
    return found


def test_alert_rules_pass_promtool(render: Render, tmp_path: Path) -> None:
    promtool = _promtool()
    (rule,) = render((FULL_VALUES,)).of_kind("PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule through promtool."""
    promtool = _promtool()
    substitutions = {
        "$__rate_interval": "5m",
        "$__range": "1h",
        "$namespace": ".*",
        "$stage": ".*",
        "$provider": ".*",
    }
    rules = []
    for name, exprs in dashboard_queries().items():
        for index, expr in enumerate(exprs):
            if expr.startswith("label_values("):
                continue
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:{Path(name).stem}:{index}", "expr": expr})
    path = tmp_path / "dashboards.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
