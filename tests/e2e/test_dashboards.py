"""The chart's Grafana dashboards show real data: every service runs as a real process, a real
Prometheus (the Debian package, started the way `make up` starts it) scrapes them, jobs are run so
that every panel has something to show, and then every panel's query of every dashboard is
evaluated through Prometheus' HTTP API. A query with no series fails the test, by panel."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.kafka import EventProducer
from stt_common.messages import Topic
from stt_common.settings import Settings
from stt_devstack.harness import ServiceProcess, stop_services, wait_until
from stt_devstack.infra import prometheus_ready, start_prometheus
from stt_devstack.procs import http_ok, terminate
from stt_ingest.keys import create_key
from tests.fakes.openai_server import Failure, FakeOpenAIProcess
from tests.fakes.webhook_receiver import serve_receiver
from tests.fixtures.audio import concat_wavs, librivox_wavs
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "charts" / "stt-pipeline" / "dashboards").glob("*.json"))
NAMESPACE = "stt-dashboards"
SCRAPE_INTERVAL_SECONDS = 2

# Panels fed by exporters this test does not run; in a cluster they come from elsewhere.
ALLOWED_EMPTY: dict[tuple[str, str], str] = {
    # kafka_consumergroup_lag: from the Kafka exporter (danielqsj/kafka-exporter), not our services;
    # the local broker (Tansu) has no exporter.
    ("stages", "Consumer-group lag"): "kafka exporter",
    # Its second target (DLQ depth from kafka_topic_partition_*_offset) is the Kafka exporter's too;
    # the first (stt_messages_total{outcome="dlq"}) must have data, and does: a garbage message.
    ("stages", "Dead-lettered messages"): "kafka exporter",
}
# Series of these metrics only ever come from exporters we do not run (a target whose expressions
# all use them is allowed to be empty, per target rather than per panel).
EXPORTER_METRICS = re.compile(r"\b(kafka_consumergroup_lag|kafka_topic_partition_\w+|kube_\w+)\b")


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((str(panel.get("title", "")), str(target["expr"])))

    walk(dashboard.get("panels", []))
    return found


def concrete(expr: str) -> str:
    """Grafana's variables replaced by what a viewer of this stack would pick."""
    expr = expr.replace("$__rate_interval", "1m").replace("${__rate_interval}", "1m")
    expr = expr.replace("$__range", "10m").replace("${__range}", "10m").replace("$__interval", "1m")
    expr = re.sub(r"\$\{?namespace\}?", NAMESPACE, expr)
    # Any other template variable (stage, provider, ...): "all", as a regex.
    return re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)


def test_concrete_replaces_every_variable() -> None:
    for path in DASHBOARDS:
        for _, expr in panel_targets(json.loads(path.read_text())):
            assert "$" not in concrete(expr), expr


@pytest.fixture
async def prometheus_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    return directory


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAIProcess]:
    proc = FakeOpenAIProcess().start()
    try:
        yield proc
    finally:
        proc.stop()


def corrupt_wav(path: Path) -> None:
    """Looks like a WAV to ingest's magic-byte sniffing; the chunker's decoder cannot read it. Longer
    than ingest's sniff window, so its end (where a missing `data` chunk would show) is not seen
    before the chunker tries it."""
    path.write_bytes(b"RIFF" + (1_000_000).to_bytes(4, "little") + b"WAVEfmt " + os.urandom(40_000))


def tone_wav(path: Path, seconds: float) -> None:
    """A loud square wave: every frame counts as speech for the transcriber's coverage check."""
    rate = 16000
    period = rate // 200
    frame = b"".join(
        (12000 if (i % period) < period // 2 else -12000).to_bytes(2, "little", signed=True)
        for i in range(period)
    )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frame * int(seconds * rate / period))


async def test_every_panel_of_every_dashboard_has_data(
    infra_env: dict[str, str],
    settings: Settings,
    sessionmaker_: async_sessionmaker[AsyncSession],
    prometheus_dir: Path,
    fake_openai: FakeOpenAIProcess,
    tmp_path: Path,
) -> None:
    assert DASHBOARDS, "no dashboards found"
    http_port = free_port()
    base_env = {**os.environ, **infra_env, "STT_LOG_LEVEL": "INFO"}
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    async with serve_receiver("127.0.0.1") as receiver:
        services = {
            "ingest": ServiceProcess(
                "ingest",
                {
                    **base_env,
                    "STT_HTTP_PORT": str(http_port),
                    "STT_SSRF_ALLOW_NETWORKS": "127.0.0.0/8",
                    # Ingest refuses jobs for providers it has no key for.
                    "STT_OPENAI_API_KEY": "sk-test",
                },
                log_dir,
            ),
            "chunker": ServiceProcess("chunker", base_env, log_dir),
            "transcriber": ServiceProcess(
                "transcriber",
                {
                    **base_env,
                    "STT_OPENAI_API_KEY": "sk-test",
                    "STT_OPENAI_BASE_URL": fake_openai.base_url,
                    "STT_BACKOFF_BASE_SECONDS": "0.05",
                    "STT_BACKOFF_MAX_SECONDS": "0.2",
                    "STT_COVERAGE_RETRIES": "1",
                    "STT_COVERAGE_GAP_SECONDS": "2",
                },
                log_dir,
            ),
            "merger": ServiceProcess("merger", base_env, log_dir),
            "notifier": ServiceProcess(
                "notifier",
                {
                    **base_env,
                    "STT_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
                    "STT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.2",
                    "STT_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.3,0.3",
                    "STT_WEBHOOK_RETRY_JITTER": "0",
                },
                log_dir,
            ),
            "maintenance": ServiceProcess("maintenance", base_env, log_dir, args=("loop",)),
        }
        targets = {name: service.ops_port for name, service in services.items()}
        targets["ingest"] = http_port  # ingest serves /metrics on its HTTP port
        prom_port = free_port()
        prometheus = await start_prometheus(
            port=prom_port,
            directory=prometheus_dir,
            targets=targets,
            log_path=prometheus_dir / "prometheus.log",
            namespace=NAMESPACE,
            scrape_interval=f"{SCRAPE_INTERVAL_SECONDS}s",
        )
        try:
            for service in services.values():
                service.start()
            # Ingest answers /readyz on its HTTP port, the workers on their ops port.
            await asyncio.gather(
                *(service.ready() for name, service in services.items() if name != "ingest"),
                wait_until(
                    lambda: http_ok(f"http://127.0.0.1:{http_port}/readyz"), timeout=60, what="ingest ready"
                ),
            )
            await wait_until(lambda: prometheus_ready(prom_port), timeout=30, what="prometheus ready")
            await produce_data(services, http_port, receiver, sessionmaker_, settings, fake_openai, tmp_path)
            await asyncio.sleep(3 * SCRAPE_INTERVAL_SECONDS)
            missing = await empty_panels(prom_port)
            if missing:
                # Give slow scrapes one more chance before failing.
                await asyncio.sleep(3 * SCRAPE_INTERVAL_SECONDS)
                missing = await empty_panels(prom_port)
            assert not missing, "panels without data:\n" + "\n".join(missing)
        finally:
            stop_services(services.values())
            await terminate(prometheus, sig=signal.SIGTERM)


async def produce_data(
    services: dict[str, ServiceProcess],
    http_port: int,
    receiver: Any,
    sessionmaker_: async_sessionmaker[AsyncSession],
    settings: Settings,
    fake_openai: FakeOpenAIProcess,
    tmp_path: Path,
) -> None:
    key = await create_key(sessionmaker_, name="dashboards", tenant="dashboards")
    limited = await create_key(
        sessionmaker_, name="dashboards-limited", tenant="dashboards-limited", rate_limit_per_minute=1
    )
    speech = tmp_path / "speech.wav"
    concat_wavs([p for p, _ in librivox_wavs()], speech, gap_seconds=0.5)
    tone = tmp_path / "tone.wav"
    tone_wav(tone, 12.0)
    broken = tmp_path / "broken.wav"
    corrupt_wav(broken)
    hook = receiver.hook("/dashboards", secret=key.webhook_secret)
    # The fake OpenAI: one 500 (a provider error and a retry), then only the first second of the
    # chunk transcribed (a coverage retry, and a chunk left with a coverage gap).
    fake_openai.control.configure(script=[[0.0, 1.0, "hello"]])
    fake_openai.control.fail(Failure.server_error(500))

    base = f"http://127.0.0.1:{http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as client:
        headers = {"X-API-Key": key.api_key}

        async def upload(path: Path, **data: str) -> str:
            with path.open("rb") as handle:
                answer = await client.post(
                    "/api/v1/transcribe",
                    headers=headers,
                    files={"file": (path.name, handle, "audio/wav")},
                    data=data,
                )
            assert answer.status_code == 202, answer.text
            return str(answer.json()["job_id"])

        completed = await upload(speech, provider="local", webhook_url=hook)
        failed = await upload(broken, provider="local")
        gap = await upload(tone, provider="openai")

        # A URL submission whose download fails (the receiver answers text, not media), then the
        # same key over its limit of one submission a minute.
        limited_headers = {"X-API-Key": limited.api_key}
        answer = await client.post(
            "/api/v1/transcribe/url", headers=limited_headers, json={"url": receiver.url("/not-media")}
        )
        assert answer.status_code == 202, answer.text
        answer = await client.post(
            "/api/v1/transcribe/url", headers=limited_headers, json={"url": receiver.url("/not-media")}
        )
        assert answer.status_code == 429, answer.text

        # A message no stage can parse: the chunker dead-letters it.
        async with EventProducer(settings, client_id="e2e-dashboards") as producer:
            await producer.send_raw(Topic.JOBS_SUBMITTED.value, b"not an envelope", key=None, headers=[])

        async def status_of(job_id: str) -> str:
            return str((await client.get(f"/api/v1/jobs/{job_id}", headers=headers)).json()["status"])

        async def terminal(job_id: str) -> str | None:
            status = await status_of(job_id)
            return status if status in {"COMPLETED", "FAILED", "CANCELLED"} else None

        results: dict[str, str] = {}
        for job_id in (completed, failed, gap):
            results[job_id] = await wait_until(
                functools.partial(terminal, job_id), timeout=150, what=f"job {job_id}", interval=0.3
            )
        assert results[completed] == "COMPLETED", results
        assert results[failed] == "FAILED", results
        assert results[gap] == "COMPLETED", results
        await wait_until(lambda: receiver.delivered("/dashboards"), timeout=30, what="webhook delivered")


async def empty_panels(prom_port: int) -> list[str]:
    missing: list[str] = []
    now = time.time()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{prom_port}", timeout=10, trust_env=False
    ) as client:
        for path in DASHBOARDS:
            dashboard = path.stem
            for title, expr in panel_targets(json.loads(path.read_text())):
                query = concrete(expr)
                answer = await client.get("/api/v1/query", params={"query": query, "time": now})
                body = answer.json()
                if answer.status_code != 200 or body.get("status") != "success":
                    missing.append(f"{dashboard} / {title}: query error {body.get('error')!r}: {query}")
                    continue
                if body["data"]["result"]:
                    continue
                if (dashboard, title) in ALLOWED_EMPTY and EXPORTER_METRICS.search(expr):
                    continue
                missing.append(f"{dashboard} / {title}: no series: {query}")
    return missing
