"""The notifier and the maintenance command as real processes on the real stack.

The notifier listens on a broker of this module's own (so it only ever hears triggers these tests
produce) and delivers to a receiver on 127.0.0.1, which its allow-list admits; maintenance passes
run as `python -m stt_maintenance run`, with thresholds in hours and jobs aged on purpose, so
nothing else in the shared database is old enough to be touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import (
    ChunkStatus,
    DeliveryStatus,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
)
from stt_common.errors import next_step
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.s3 import ObjectStore, job_prefix, original_key, result_key
from stt_common.settings import Settings
from stt_devstack.harness import ServiceProcess
from stt_maintenance.main import SKIPPED_LINE
from stt_maintenance.settings import DEFAULT_LOCK_ID
from tests.fakes.webhook_receiver import WebhookReceiver, serve_receiver
from tests.fixtures.audio import ESPEAK_VOICE, ESPEAK_WPM, espeak_wav
from tests.helpers import free_port, private_broker, wait_until
from tests.integration.ingest.conftest import messages_for
from tests.integration.notifier.factory import (
    AGED,
    MAINTENANCE_ENV,
    JobFactory,
    Owner,
    make_owner,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def broker(settings: Settings) -> AsyncIterator[str]:
    async with private_broker(settings) as address:
        yield address


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with serve_receiver("127.0.0.1") as started:
        yield started


@pytest.fixture(scope="module")
async def internal_receiver() -> AsyncIterator[WebhookReceiver]:
    """On 127.0.0.2: loopback too, but outside the notifier's allow-list (127.0.0.1/32)."""
    async with serve_receiver("127.0.0.2") as started:
        yield started


@pytest.fixture(scope="module")
async def notifier(
    infra_env: dict[str, str], broker: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    env = {
        **os.environ,
        **infra_env,
        "STT_LOG_LEVEL": "INFO",
        "STT_KAFKA_BOOTSTRAP_SERVERS": broker,
        "STT_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1/32",
        "STT_WEBHOOK_RETRY_SCHEDULE_SECONDS": "0.3,0.3,0.3",
        "STT_WEBHOOK_RETRY_JITTER": "0",
        "STT_WEBHOOK_POLL_INTERVAL_SECONDS": "0.2",
        "STT_PUBLIC_BASE_URL": "https://stt.example.test",
    }
    service = ServiceProcess("notifier", env, tmp_path_factory.mktemp("notifier")).start()
    try:
        await service.ready()
        yield service
    finally:
        service.kill(signal.SIGTERM)
        assert service.proc is not None
        assert service.proc.returncode == 0, service.log()[-3000:]


@pytest.fixture(scope="module")
async def producer(settings: Settings, broker: str) -> AsyncIterator[EventProducer]:
    async with EventProducer(
        settings.model_copy(update={"kafka_bootstrap_servers": broker}), client_id="e2e-notifier"
    ) as started:
        yield started


@pytest.fixture(scope="module")
async def owner(sessionmaker_: async_sessionmaker[AsyncSession]) -> Owner:
    return await make_owner(sessionmaker_, name="e2e-webhooks")


@pytest.fixture
async def factory(sessionmaker_: async_sessionmaker[AsyncSession]) -> AsyncIterator[JobFactory]:
    made = JobFactory(sessionmaker_)
    yield made
    await made.cleanup()


async def emit_finished(producer: EventProducer, job_id: uuid.UUID) -> None:
    await producer.emit(Topic.JOBS_FINISHED, Envelope.for_topic(Topic.JOBS_FINISHED, job_id, producer="e2e"))


async def settled(factory: JobFactory, job_id: uuid.UUID, timeout: float = 30) -> WebhookDelivery:
    async def done() -> WebhookDelivery | None:
        deliveries = await factory.deliveries(job_id)
        return deliveries[-1] if deliveries and deliveries[-1].status != DeliveryStatus.PENDING else None

    delivery: WebhookDelivery = await wait_until(
        done, timeout=timeout, what=f"webhook of {job_id}", interval=0.2
    )
    return delivery


async def attempt_codes(
    sessions: async_sessionmaker[AsyncSession], delivery_id: uuid.UUID
) -> list[int | None]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(WebhookAttempt.status_code)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )


async def run_maintenance(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_maintenance",
        *(args or ("run",)),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def summary_of(output: str) -> dict[str, int] | None:
    """The `redriven=… failed_stalled=…` line of a pass, parsed; None for a skipped pass."""
    for line in output.splitlines():
        if line.startswith("redriven="):
            return {k: int(v) for k, v in (part.split("=") for part in line.split()) if v.isdigit()}
    assert SKIPPED_LINE in output, output
    return None


@pytest.fixture(scope="module")
def maintenance_env(infra_env: dict[str, str], broker: str) -> dict[str, str]:
    """Maintenance on the module's broker: its triggers reach this module's notifier and no stage."""
    return {**os.environ, **infra_env, **MAINTENANCE_ENV, "STT_KAFKA_BOOTSTRAP_SERVERS": broker}


# -- notifier -----------------------------------------------------------------------------------


async def test_a_finished_job_is_delivered_once_despite_duplicate_triggers(
    notifier: ServiceProcess,
    producer: EventProducer,
    receiver: WebhookReceiver,
    factory: JobFactory,
    owner: Owner,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    url = receiver.hook("/e2e/ok", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    for _ in range(3):  # the merger's redelivery, a re-notify, a cancel race: all the same event
        await emit_finished(producer, job_id)
    delivery = await settled(factory, job_id)
    await emit_finished(producer, job_id)  # and one more after the success
    await asyncio.sleep(1.5)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert len(await factory.deliveries(job_id)) == 1
    [request] = receiver.received("/e2e/ok")
    assert request.verified
    assert request.event_id == f"evt_{job_id.hex}_completed_1"
    assert request.payload["type"] == "job.completed"
    assert request.payload["result_url"] == f"https://stt.example.test/api/v1/jobs/{job_id}/result"
    assert await attempt_codes(sessionmaker_, delivery.id) == [200]


async def test_a_receiver_failing_three_times_then_answering(
    notifier: ServiceProcess,
    producer: EventProducer,
    receiver: WebhookReceiver,
    factory: JobFactory,
    owner: Owner,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    url = receiver.hook("/e2e/flaky", secret=owner.webhook_secret, script=[500, 502, 503])
    job_id = await factory.make(
        JobStatus.FAILED, owner=owner, webhook_url=url, error_code="timeout", error_message="slow"
    )
    await emit_finished(producer, job_id)
    delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert await attempt_codes(sessionmaker_, delivery.id) == [500, 502, 503, 200]
    requests = receiver.received("/e2e/flaky")
    assert [r.answered for r in requests] == [500, 502, 503, 200]
    assert len({r.event_id for r in requests}) == 1
    assert all(r.verified for r in requests)
    assert requests[-1].payload["error"] == {
        "code": "timeout",
        "message": "slow",
        "next_step": next_step("timeout", job_id),
        "retryable": True,
    }


async def test_a_receiver_answering_410_is_not_called_again(
    notifier: ServiceProcess,
    producer: EventProducer,
    receiver: WebhookReceiver,
    factory: JobFactory,
    owner: Owner,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    url = receiver.hook("/e2e/gone", secret=owner.webhook_secret, then=410)
    job_id = await factory.make(JobStatus.CANCELLED, owner=owner, webhook_url=url, error_code="cancelled")
    await emit_finished(producer, job_id)
    delivery = await settled(factory, job_id)
    await asyncio.sleep(1.5)  # five retry delays
    assert delivery.status == DeliveryStatus.FAILED
    assert await attempt_codes(sessionmaker_, delivery.id) == [410]
    assert len(receiver.received("/e2e/gone")) == 1


async def test_a_url_outside_the_allow_list_is_refused_at_delivery(
    notifier: ServiceProcess,
    producer: EventProducer,
    internal_receiver: WebhookReceiver,
    factory: JobFactory,
    owner: Owner,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    url = internal_receiver.hook("/e2e/internal", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.COMPLETED, owner=owner, webhook_url=url)
    await emit_finished(producer, job_id)
    delivery = await settled(factory, job_id)
    assert delivery.status == DeliveryStatus.FAILED
    async with sessionmaker_() as session:
        [error] = await session.scalars(
            select(WebhookAttempt.error).where(WebhookAttempt.delivery_id == delivery.id)
        )
    assert error is not None
    assert error.startswith("url_address_blocked")
    assert internal_receiver.received() == []


# -- maintenance --------------------------------------------------------------------------------


async def test_a_job_whose_trigger_was_lost_completes_after_one_maintenance_run(
    pipeline: dict[str, ServiceProcess],
    infra_env: dict[str, str],
    factory: JobFactory,
    store: ObjectStore,
    tmp_path: Path,
) -> None:
    audio = tmp_path / "lost.wav"
    espeak_wav(
        audio, ["The maintenance job found this one."], voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM
    )
    # As ingest leaves a job whose produce failed: row UPLOADED, object stored, no message.
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED)
    await store.upload_file(original_key(job_id), audio)
    # On the session broker, where the pipeline's stages listen.
    rc, output = await run_maintenance({**os.environ, **infra_env, **MAINTENANCE_ENV})
    assert rc == 0, output
    summary = summary_of(output)
    assert summary is not None, output
    assert summary["redriven"] >= 1, output

    async def finished() -> bool:
        return (await factory.get(job_id)).status in {JobStatus.COMPLETED, JobStatus.FAILED}

    await wait_until(finished, timeout=120, what="the re-driven job to finish", interval=0.5)
    job = await factory.get(job_id)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    assert "maintenance" in document["text"].lower()
    stages = [event.stage for event in await factory.events(job_id)]
    assert stages.index("maintenance") < stages.index("chunker") < stages.index("merger")


async def test_a_job_stuck_beyond_the_budget_fails_as_stalled_and_is_notified(
    notifier: ServiceProcess,
    maintenance_env: dict[str, str],
    receiver: WebhookReceiver,
    factory: JobFactory,
    owner: Owner,
) -> None:
    url = receiver.hook("/e2e/stalled", secret=owner.webhook_secret)
    job_id = await factory.make(JobStatus.MERGING, age=AGED, owner=owner, webhook_url=url)
    for expected in (1, 2):  # nobody consumes the re-driven trigger on this broker
        rc, output = await run_maintenance(maintenance_env)
        assert rc == 0, output
        assert (await factory.get(job_id)).redrive_count == expected
        await factory.age_events(job_id)
    rc, output = await run_maintenance(maintenance_env)
    assert rc == 0, output
    summary = summary_of(output)
    assert summary is not None
    assert summary["failed_stalled"] >= 1
    job = await factory.get(job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "stalled")
    await settled(factory, job_id)
    [request] = receiver.delivered("/e2e/stalled")
    assert request.payload["type"] == "job.failed"
    assert request.payload["error"]["code"] == "stalled"


async def test_retention_removes_an_expired_job_and_leaves_recent_ones(
    maintenance_env: dict[str, str],
    factory: JobFactory,
    store: ObjectStore,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    done = [(ChunkStatus.COMPLETED, None), (ChunkStatus.COMPLETED, None)]
    expired = await factory.make(JobStatus.COMPLETED, age=timedelta(days=8), chunks=done)
    recent = await factory.make(JobStatus.COMPLETED, age=timedelta(hours=1), chunks=done)
    for job_id in (expired, recent):
        for key in (original_key(job_id), result_key(job_id, "json"), f"{job_prefix(job_id)}chunks/0000.wav"):
            await store.put_bytes(key, b"data")
    rc, output = await run_maintenance(maintenance_env)
    assert rc == 0, output
    summary = summary_of(output)
    assert summary is not None
    assert summary["deleted_jobs"] >= 1
    assert summary["deleted_objects"] >= 3
    assert await store.list_keys(job_prefix(expired)) == []
    assert not await factory.exists(expired)
    async with sessionmaker_() as session:
        for table in ("chunks", "job_events", "webhook_deliveries"):
            count = await session.scalar(
                text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": expired}
            )
            assert count == 0, table
    assert len(await store.list_keys(job_prefix(recent))) == 3
    assert await factory.exists(recent)


async def test_two_maintenance_runs_at_once_do_no_harm(
    maintenance_env: dict[str, str],
    factory: JobFactory,
    settings: Settings,
    broker: str,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED)
    results = await asyncio.gather(run_maintenance(maintenance_env), run_maintenance(maintenance_env))
    for rc, output in results:
        assert rc == 0, output
    summaries = [summary_of(output) for _, output in results]
    assert any(s is not None for s in summaries)
    assert (await factory.get(job_id)).redrive_count == 1  # re-driven once, by one of them
    assert len(await factory.events(job_id, stage="maintenance")) == 1
    on_broker = settings.model_copy(update={"kafka_bootstrap_servers": broker})
    assert len(await messages_for(on_broker, Topic.JOBS_SUBMITTED, job_id)) == 1

    # While one pass holds the lock, another says so and does nothing.
    other = await factory.make(JobStatus.UPLOADED, age=AGED)
    async with sessionmaker_() as session:
        assert await session.scalar(select(func.pg_try_advisory_lock(DEFAULT_LOCK_ID)))
        rc, output = await run_maintenance(maintenance_env)
        await session.scalar(select(func.pg_advisory_unlock(DEFAULT_LOCK_ID)))
    assert rc == 0, output
    assert summary_of(output) is None
    assert (await factory.get(other)).redrive_count == 0
    assert await factory.events(other, stage="maintenance") == []


async def test_loop_mode_serves_health_and_metrics_and_stops_on_sigterm(
    maintenance_env: dict[str, str],
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stt_maintenance",
        "loop",
        "--interval",
        "0.5",
        env={**maintenance_env, "STT_OPS_PORT": str(port)},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def metrics() -> str | None:
            try:
                async with httpx.AsyncClient() as client:
                    ready = await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                    body = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=2)).text
            except httpx.HTTPError:
                return None
            return (
                body
                if ready.status_code == 200 and 'stt_maintenance_runs_total{result="ok"} 2.0' in body
                else None
            )

        body = await wait_until(metrics, timeout=30, what="two loop passes", interval=0.3)
        assert "stt_maintenance_last_success_timestamp_seconds" in body
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz", timeout=2)).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    assert out.decode().count("redriven=") >= 2
