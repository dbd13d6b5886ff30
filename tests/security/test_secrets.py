"""Secrets stay secret: a real ingest process and a real notifier process, started with known fake
secrets (vendor keys, the stack's S3 secret key, an API key and its webhook secret), are driven into
errors (bad and misplaced keys, URLs carrying passwords, invalid input made of secrets, a download
that fails, a webhook receiver that keeps failing). None of the secret values may appear in either
process's stdout/stderr (debug level), in any problem body, in any API answer, or in `/metrics`.

Every look is paired with a positive control (the log does describe the failure; the delivery was
attempted), so an empty or wrong capture cannot pass for a clean one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.messages import Envelope, Topic
from stt_common.settings import Settings
from stt_ingest import keys
from tests.helpers import free_port, private_broker, wait_until
from tests.integration.ingest.conftest import ROOT, IngestProcess
from tests.security.conftest import BOUNCER_HOST, FAKE_GEMINI_KEY, FAKE_OPENAI_KEY, Bouncer

pytestmark = pytest.mark.timeout(120)

URL_PASSWORD = "hunter2-url-password-" + uuid.uuid4().hex[:8]
FAKE_ANTHROPIC_STYLE = "sk-ant-test-" + uuid.uuid4().hex


@dataclass
class NotifierProcess:
    ops_url: str
    broker: str
    log: Path
    proc: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def run_notifier_process(
    infra_env: dict[str, str], settings: Settings, tmp_dir: Path
) -> AsyncIterator[NotifierProcess]:
    """`python -m stt_notifier` on a private broker (it hears only what this test produces), the
    bouncer allow-listed as the webhook receiver, fast retries, debug logs."""
    async with private_broker(settings) as broker:
        port = free_port()
        log = tmp_dir / "notifier.log"
        env = {
            **os.environ,
            **infra_env,
            "PYTHONPATH": str(ROOT),
            "STT_KAFKA_BOOTSTRAP_SERVERS": broker,
            "STT_OPS_HOST": "127.0.0.1",
            "STT_OPS_PORT": str(port),
            "STT_WEBHOOK_ALLOW_NETWORKS": f"{BOUNCER_HOST}/32",
            "STT_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.2",
            "STT_WEBHOOK_RETRY_JITTER": "0",
            "STT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.2",
            "STT_OPENAI_API_KEY": FAKE_OPENAI_KEY,
            "STT_LOG_LEVEL": "DEBUG",
        }
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "stt_notifier"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        handle = NotifierProcess(ops_url=f"http://127.0.0.1:{port}", broker=broker, log=log, proc=proc)
        try:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise AssertionError("notifier exited:\n" + log.read_text(errors="replace")[-3000:])
                try:
                    async with httpx.AsyncClient(timeout=1) as client:
                        return (await client.get(handle.ops_url + "/healthz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_until(healthy, timeout=40, what="the notifier process", interval=0.2)
            yield handle
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@dataclass
class Secrets:
    api_key: str
    webhook_secret: str
    values: dict[str, str]  # name -> value that must never be shown


@pytest.fixture(scope="module")
async def secrets_(infra_env: dict[str, str], sessionmaker_: async_sessionmaker[AsyncSession]) -> Secrets:
    created = await keys.create_key(sessionmaker_, name="secrets", tenant="security", rate_limit_per_minute=0)
    values = {
        "api key": created.api_key,
        "api key body": created.api_key.split("_", 1)[1],
        "webhook secret": created.webhook_secret,
        "webhook signing key (base64)": created.webhook_secret.removeprefix("whsec_"),
        "s3 secret key": infra_env["STT_S3_SECRET_ACCESS_KEY"],
        "openai key": FAKE_OPENAI_KEY,
        "gemini key": FAKE_GEMINI_KEY,
        "a near-miss api key": created.api_key[:-6] + "Zz9Zz9",
        "a vendor key sent as an api key": FAKE_ANTHROPIC_STYLE,
        "password in a url": URL_PASSWORD,
    }
    database_password = urlsplit(infra_env.get("STT_DATABASE_URL", "")).password
    if database_password and len(database_password) >= 8:
        values["database password"] = database_password
    assert all(len(value) >= 12 for value in values.values()), values  # long enough to be unambiguous
    return Secrets(api_key=created.api_key, webhook_secret=created.webhook_secret, values=values)


def _attempt_lines(log: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == "webhook attempt"]


def leaks(text: str, secrets: Secrets) -> list[str]:
    return [name for name, value in secrets.values.items() if value in text]


async def _drive_ingest(
    ingest: IngestProcess, secrets: Secrets, bouncer: Bouncer
) -> tuple[list[httpx.Response], str]:
    """Requests that fail in every way a client can make them fail; returns the answers and the id
    of a URL job whose download fails (its webhook is then delivered by the notifier)."""
    good = {"X-API-Key": secrets.api_key}
    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=ingest.base_url, timeout=30) as client:
        for headers in (
            {"X-API-Key": secrets.values["a near-miss api key"]},
            {"X-API-Key": FAKE_ANTHROPIC_STYLE},
            {"X-API-Key": FAKE_OPENAI_KEY},
            # Bearer is the other way to send a key: a near miss must be refused without an echo.
            {"Authorization": f"Bearer {secrets.values['a near-miss api key']}"},
            {"X-API-Key": secrets.webhook_secret},
        ):
            answers.append(await client.get("/api/v1/jobs", headers=headers))
        for body in (
            {"url": f"http://user:{URL_PASSWORD}@{BOUNCER_HOST}:{bouncer.port}/a.wav"},
            {"url": "http://public.test/a.wav", "webhook_url": f"http://hook:{URL_PASSWORD}@127.0.0.3/h"},
            {"url": "http://public.test/a.wav", "language": FAKE_OPENAI_KEY},
            {"url": "http://public.test/a.wav", "provider": FAKE_GEMINI_KEY},
            # (Not `model`: an unknown model's name is echoed back to its sender by design, pinned in
            # tests/integration/ingest/test_local_model_options.py. It is the client's own input.)
            {"url": secrets.values["s3 secret key"]},
            {"url": "http://public.test/a.wav", "provider": "elevenlabs"},  # not configured
            {"url": "http://public.test/a.wav", "unexpected": secrets.api_key},
        ):
            answers.append(await client.post("/api/v1/transcribe/url", headers=good, json=body))
        answers.append(
            await client.post(
                "/api/v1/transcribe/url",
                headers={**good, "Content-Type": "application/json"},
                content=f'{{"url": "{FAKE_OPENAI_KEY}"'.encode(),  # broken JSON
            )
        )
        answers.append(
            await client.post(
                "/api/v1/transcribe",
                headers=good,
                files={"file": ("a.wav", FAKE_OPENAI_KEY.encode() * 100, "audio/wav")},
                data={"language": secrets.webhook_secret},
            )
        )
        failing = await client.post(
            "/api/v1/transcribe/url",
            headers=good,
            json={
                "url": f"http://{BOUNCER_HOST}:{bouncer.port}/missing.wav",
                "webhook_url": f"http://{BOUNCER_HOST}:{bouncer.port}/missing.wav",
            },
        )
        assert failing.status_code == 202, failing.text
        job_id = failing.json()["job_id"]

        async def failed() -> bool:
            job = (await client.get(f"/api/v1/jobs/{job_id}", headers=good)).json()
            return bool(job["status"] == "FAILED")

        await wait_until(failed, timeout=20, what="the failing download", interval=0.1)
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", answer.text
        assert answer.json()["code"]
    return answers, job_id


@pytest.fixture(scope="module")
async def exercised(
    ingest_process: IngestProcess,
    infra_env: dict[str, str],
    settings: Settings,
    secrets_: Secrets,
    bouncer: Bouncer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    answers, job_id = await _drive_ingest(ingest_process, secrets_, bouncer)
    good = {"X-API-Key": secrets_.api_key}
    async with run_notifier_process(infra_env, settings, tmp_path_factory.mktemp("notifier")) as notifier:
        producer = AIOKafkaProducer(bootstrap_servers=notifier.broker)
        await producer.start()
        try:
            envelope = Envelope.for_topic(Topic.JOBS_FINISHED, uuid.UUID(job_id), producer="security-test")
            await producer.send_and_wait(Topic.JOBS_FINISHED.value, envelope.encode())
        finally:
            await producer.stop()
        async with httpx.AsyncClient(base_url=ingest_process.base_url, timeout=30) as client:

            async def delivery_failed() -> dict[str, Any] | None:
                listing: dict[str, Any] = (
                    await client.get(f"/api/v1/jobs/{job_id}/webhooks", headers=good)
                ).json()
                items = listing.get("items") or []
                return listing if items and items[0]["status"] == "FAILED" else None

            webhooks = await wait_until(delivery_failed, timeout=40, what="the failing webhook", interval=0.2)
            ingest_metrics = (await client.get("/metrics")).text
            providers = await client.get("/api/v1/providers", headers=good)
            job = await client.get(f"/api/v1/jobs/{job_id}", headers=good)
            ready = await client.get("/readyz")
            async with httpx.AsyncClient(base_url=notifier.ops_url, timeout=10) as ops:
                notifier_metrics = (await ops.get("/metrics")).text
                notifier_ready = await ops.get("/readyz")

        def attempts_logged() -> bool:  # the log line follows the recorded attempt
            return len(_attempt_lines(notifier.log.read_text(errors="replace"))) >= 2

        await wait_until(attempts_logged, timeout=10, what="the notifier's attempt log lines", interval=0.1)
        notifier_log = notifier.log.read_text(errors="replace")
    return {
        "job_id": job_id,
        "answers": answers,
        "webhooks": webhooks,
        "ingest_log": ingest_process.log.read_text(errors="replace"),
        "notifier_log": notifier_log,
        "ingest_metrics": ingest_metrics,
        "notifier_metrics": notifier_metrics,
        "other_answers": [providers, job, ready, notifier_ready],
    }


def test_the_failures_really_happened(exercised: dict[str, Any]) -> None:
    """Positive controls: what is searched below is the right capture, and it is not empty."""
    job_id = exercised["job_id"]
    [delivery] = exercised["webhooks"]["items"]
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [404, 404]
    assert "invalid_api_key" in exercised["ingest_log"] or '"status": 401' in exercised["ingest_log"]
    assert job_id in exercised["ingest_log"]
    notifier_lines = [
        json.loads(line) for line in exercised["notifier_log"].splitlines() if line.startswith("{")
    ]
    attempts = [line for line in notifier_lines if line.get("event") == "webhook attempt"]
    assert [line["job_id"] for line in attempts] == [job_id, job_id]
    assert "stt_webhook_deliveries_total" in exercised["notifier_metrics"]
    assert "stt_" in exercised["ingest_metrics"]


@pytest.mark.parametrize("where", ["ingest_log", "notifier_log"])
def test_no_secret_in_the_logs(exercised: dict[str, Any], secrets_: Secrets, where: str) -> None:
    assert leaks(exercised[where], secrets_) == []


def test_no_secret_in_any_problem_or_answer(exercised: dict[str, Any], secrets_: Secrets) -> None:
    for answer in [*exercised["answers"], *exercised["other_answers"]]:
        shown = json.dumps(dict(answer.headers)) + answer.text
        assert leaks(shown, secrets_) == [], (answer.request.url, answer.text)
    assert leaks(json.dumps(exercised["webhooks"]), secrets_) == []


@pytest.mark.parametrize("where", ["ingest_metrics", "notifier_metrics"])
def test_no_secret_in_the_metrics(exercised: dict[str, Any], secrets_: Secrets, where: str) -> None:
    assert leaks(exercised[where], secrets_) == []
