"""Maintenance passes in-process against the real Postgres, S3 and a broker of their own: what is
re-driven (and with which trigger), when a job is failed as stalled, re-notification, retention,
and the advisory lock. Jobs are aged on purpose; thresholds stay in hours (see factory.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from stt_common.db.engine import make_engine, make_sessionmaker
from stt_common.db.models import (
    Chunk,
    ChunkStatus,
    DeliveryStatus,
    IdempotencyKey,
    JobEvent,
    JobStatus,
    WebhookAttempt,
    WebhookDelivery,
)
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.s3 import ObjectStore, chunk_audio_key, chunk_result_key, job_prefix, original_key, result_key
from stt_common.settings import Settings
from stt_maintenance.report import Summary
from stt_maintenance.settings import DEFAULT_LOCK_ID, MaintenanceSettings
from stt_maintenance.sweep import Maintenance
from tests.helpers import private_broker
from tests.integration.ingest.conftest import messages_for
from tests.integration.notifier.factory import (
    AGED,
    STALE_SECONDS,
    JobFactory,
    Owner,
    with_overrides,
)

pytestmark = pytest.mark.timeout(120)

MakeMaintenance = Callable[..., Maintenance]


@pytest.fixture(scope="module")
async def broker(settings: Settings) -> AsyncIterator[str]:
    async with private_broker(settings) as address:
        yield address


@pytest.fixture(scope="module")
def broker_settings(settings: Settings, broker: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap_servers": broker})


@pytest.fixture(scope="module")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    made = make_engine(settings.database_url)
    yield made
    await made.dispose()


@pytest.fixture
async def maintenance(
    settings: Settings, broker: str, engine: AsyncEngine, store: ObjectStore
) -> AsyncIterator[MakeMaintenance]:
    sessions = make_sessionmaker(engine)
    async with EventProducer(
        settings.model_copy(update={"kafka_bootstrap_servers": broker}), client_id="test-maintenance"
    ) as producer:

        def make(**overrides: Any) -> Maintenance:
            values = {
                "kafka_bootstrap_servers": broker,
                **{
                    f"stale_{s}_seconds": STALE_SECONDS
                    for s in ("pending", "uploaded", "chunking", "transcribing", "merging")
                },
                "renotify_after_seconds": STALE_SECONDS,
                "orphan_chunks_grace_seconds": STALE_SECONDS,
                **overrides,
            }
            config: MaintenanceSettings = with_overrides(settings, MaintenanceSettings, **values)
            return Maintenance(config, engine, sessions, store, producer)

        yield make


async def one_pass(maintenance: MakeMaintenance, **overrides: Any) -> Summary:
    summary = await maintenance(**overrides).run_pass()
    assert summary is not None
    assert summary.errors == 0
    return summary


async def triggers(settings: Settings, topic: Topic, job_id: uuid.UUID, at_least: int = 1) -> list[Envelope]:
    return await messages_for(settings, topic, job_id, at_least=at_least)


async def test_a_lost_trigger_is_re_emitted_once_per_threshold(
    maintenance: MakeMaintenance, factory: JobFactory, broker_settings: Settings
) -> None:
    stuck = await factory.make(JobStatus.UPLOADED, age=AGED)
    fresh = await factory.make(JobStatus.UPLOADED)
    summary = await one_pass(maintenance)
    assert summary.redriven >= 1
    job = await factory.get(stuck)
    assert job.status == JobStatus.UPLOADED
    assert job.redrive_count == 1
    [event] = await factory.events(stuck, stage="maintenance")
    assert event.detail == {"redrive": 1, "status": "UPLOADED", "topic": "stt.jobs.submitted", "triggers": 1}
    [trigger] = await triggers(broker_settings, Topic.JOBS_SUBMITTED, stuck)
    assert trigger.producer == "maintenance"

    await one_pass(maintenance)  # the re-drive restarted the clock: nothing until it is stale again
    assert (await factory.get(stuck)).redrive_count == 1
    assert len(await triggers(broker_settings, Topic.JOBS_SUBMITTED, stuck)) == 1
    assert (await factory.get(fresh)).redrive_count == 0
    assert await triggers(broker_settings, Topic.JOBS_SUBMITTED, fresh, at_least=0) == []


async def test_each_status_re_emits_what_its_stage_consumes(
    maintenance: MakeMaintenance, factory: JobFactory, broker_settings: Settings
) -> None:
    done, pending = (ChunkStatus.COMPLETED, None), (ChunkStatus.PENDING, None)
    chunking = await factory.make(JobStatus.CHUNKING, age=AGED)
    # MERGING means every chunk is done: the last completion moves the job there under its row lock.
    merging = await factory.make(JobStatus.MERGING, age=AGED, chunks=[done, done])
    parallel = await factory.make(
        JobStatus.TRANSCRIBING,
        age=AGED,
        chunks=[done, pending, (ChunkStatus.PROCESSING, "expired"), done, pending],
    )
    chained = await factory.make(
        JobStatus.TRANSCRIBING, age=AGED, context_mode="chained", chunks=[done, pending, pending]
    )
    no_chunks = await factory.make(JobStatus.TRANSCRIBING, age=AGED)
    working = await factory.make(
        JobStatus.TRANSCRIBING, age=AGED, chunks=[(ChunkStatus.PROCESSING, "live"), pending]
    )
    await one_pass(maintenance)

    assert len(await triggers(broker_settings, Topic.JOBS_SUBMITTED, chunking)) == 1
    assert len(await triggers(broker_settings, Topic.JOBS_TRANSCRIBED, merging)) == 1
    parallel_chunks = await triggers(broker_settings, Topic.CHUNKS_READY, parallel, at_least=3)
    assert sorted(e.chunk_index or 0 for e in parallel_chunks) == [1, 2, 4]  # PENDING + expired lease
    [first_unfinished] = await triggers(broker_settings, Topic.CHUNKS_READY, chained)
    assert first_unfinished.chunk_index == 1  # chained: the next one in order only
    assert len(await triggers(broker_settings, Topic.JOBS_SUBMITTED, no_chunks)) == 1
    # A chunk under a live lease is a transcriber at work: not stale.
    assert (await factory.get(working)).redrive_count == 0
    assert await triggers(broker_settings, Topic.CHUNKS_READY, working, at_least=0) == []
    [event] = await factory.events(parallel, stage="maintenance")
    assert event.detail["chunks"] == [1, 2, 4]


async def test_a_job_without_progress_after_two_re_drives_fails_as_stalled(
    maintenance: MakeMaintenance, factory: JobFactory, broker_settings: Settings, owner: Owner
) -> None:
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED, owner=owner, webhook_url="http://127.0.0.1:9/h")
    for expected in (1, 2):
        await one_pass(maintenance)
        assert (await factory.get(job_id)).redrive_count == expected
        await factory.age_events(job_id)  # another threshold passes with nothing happening
    summary = await one_pass(maintenance)
    assert summary.failed_stalled >= 1
    job = await factory.get(job_id)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "stalled"
    assert "2 re-drive(s)" in (job.error_message or "")
    assert job.finished_at is not None
    assert len(await triggers(broker_settings, Topic.JOBS_SUBMITTED, job_id, at_least=2)) == 2
    [notified] = await triggers(broker_settings, Topic.JOBS_FINISHED, job_id)  # so the webhook hears
    assert notified.producer == "maintenance"
    last = (await factory.events(job_id))[-1]
    assert (last.stage, last.from_status, last.to_status) == ("maintenance", "UPLOADED", "FAILED")
    await one_pass(maintenance)  # terminal now: left alone
    assert len(await triggers(broker_settings, Topic.JOBS_FINISHED, job_id)) == 1


async def test_progress_between_re_drives_restores_the_budget(
    maintenance: MakeMaintenance, factory: JobFactory
) -> None:
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED)
    await one_pass(maintenance, max_redrives=1)
    assert (await factory.get(job_id)).redrive_count == 1
    # The re-drive worked: the chunker took the job ... and then it died.
    async with factory.sessions() as session, session.begin():
        session.add(JobEvent(job_id=job_id, stage="chunker", from_status="UPLOADED", to_status="CHUNKING"))
    await factory.set(job_id, status=JobStatus.CHUNKING, status_changed_at=func.now())
    await factory.age(job_id)
    await one_pass(maintenance, max_redrives=1)
    job = await factory.get(job_id)
    assert job.status == JobStatus.CHUNKING  # re-driven again, not failed: it had progressed
    assert job.redrive_count == 1
    await factory.age_events(job_id)
    await one_pass(maintenance, max_redrives=1)
    assert (await factory.get(job_id)).error_code == "stalled"  # no progress this time


async def test_a_pending_job_is_failed_after_its_threshold(
    maintenance: MakeMaintenance, factory: JobFactory, broker_settings: Settings
) -> None:
    stuck = await factory.make(JobStatus.PENDING, age=AGED)
    uploading = await factory.make(JobStatus.PENDING, age=timedelta(minutes=5))
    await one_pass(maintenance)
    job = await factory.get(stuck)
    assert (job.status, job.error_code, job.redrive_count) == (JobStatus.FAILED, "stalled", 0)
    assert "upload or download" in (job.error_message or "")
    assert len(await triggers(broker_settings, Topic.JOBS_FINISHED, stuck)) == 1
    assert (await factory.get(uploading)).status == JobStatus.PENDING


async def test_a_finished_job_whose_notification_was_lost_is_re_notified(
    maintenance: MakeMaintenance, factory: JobFactory, broker_settings: Settings, owner: Owner
) -> None:
    lost = await factory.make(JobStatus.FAILED, age=AGED, owner=owner, webhook_url="http://127.0.0.1:9/h")
    delivered = await factory.make(
        JobStatus.COMPLETED, age=AGED, owner=owner, webhook_url="http://127.0.0.1:9/h"
    )
    silent = await factory.make(JobStatus.COMPLETED, age=AGED, owner=owner)
    async with factory.sessions() as session, session.begin():
        session.add(
            WebhookDelivery(
                job_id=delivered,
                event_id=f"evt_{delivered.hex}_completed_1",
                event_type="job.completed",
                url="http://127.0.0.1:9/h",
                status=DeliveryStatus.SUCCEEDED,
            )
        )
    summary = await one_pass(maintenance)
    assert summary.renotified >= 1
    [trigger] = await triggers(broker_settings, Topic.JOBS_FINISHED, lost)
    assert trigger.producer == "maintenance"
    [event] = await factory.events(lost, stage="maintenance")
    assert event.detail == {"renotify": 1}
    assert await triggers(broker_settings, Topic.JOBS_FINISHED, delivered, at_least=0) == []
    assert await triggers(broker_settings, Topic.JOBS_FINISHED, silent, at_least=0) == []
    await one_pass(maintenance)  # not again within the threshold
    assert len(await triggers(broker_settings, Topic.JOBS_FINISHED, lost)) == 1


async def put_objects(store: ObjectStore, job_id: uuid.UUID) -> list[str]:
    keys = [
        original_key(job_id),
        chunk_audio_key(job_id, 0),
        chunk_result_key(job_id, 0),
        result_key(job_id, "json"),
        result_key(job_id, "srt"),
    ]
    for key in keys:
        await store.put_bytes(key, b"x")
    return keys


async def rows_of(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> dict[str, int]:
    async with sessions() as session:
        counts = {}
        for name, model, column in (
            ("chunks", Chunk, Chunk.job_id),
            ("events", JobEvent, JobEvent.job_id),
            ("deliveries", WebhookDelivery, WebhookDelivery.job_id),
        ):
            counts[name] = int(
                await session.scalar(select(func.count()).select_from(model).where(column == job_id)) or 0
            )
        counts["attempts"] = int(
            await session.scalar(
                select(func.count())
                .select_from(WebhookAttempt)
                .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
                .where(WebhookDelivery.job_id == job_id)
            )
            or 0
        )
        return counts


async def test_retention_deletes_expired_jobs_entirely_and_nothing_else(
    maintenance: MakeMaintenance,
    factory: JobFactory,
    store: ObjectStore,
    sessionmaker_: async_sessionmaker[AsyncSession],
    owner: Owner,
) -> None:
    done = [(ChunkStatus.COMPLETED, None)]
    expired = await factory.make(JobStatus.COMPLETED, age=timedelta(days=8), chunks=done, owner=owner)
    asked = await factory.make(JobStatus.CANCELLED, age=timedelta(minutes=3), delete_after_seconds=60)
    recent = await factory.make(JobStatus.COMPLETED, age=timedelta(days=6), chunks=done, owner=owner)
    old_but_active = await factory.make(JobStatus.TRANSCRIBING, age=timedelta(days=8), chunks=done)
    for job_id in (expired, asked, recent, old_but_active):
        await put_objects(store, job_id)
    now = datetime.now(UTC)
    async with sessionmaker_() as session, session.begin():
        for job_id, created in ((expired, now - timedelta(days=8)), (recent, now - timedelta(days=8))):
            delivery = WebhookDelivery(
                id=uuid.uuid4(),
                job_id=job_id,
                event_id=f"evt_{job_id.hex}_completed_1",
                event_type="job.completed",
                url="http://127.0.0.1:9/h",
                status=DeliveryStatus.SUCCEEDED,
                created_at=created,
            )
            session.add(delivery)
            await session.flush()
            session.add(WebhookAttempt(delivery_id=delivery.id, status_code=200, latency_ms=1.0))
        session.add(
            IdempotencyKey(
                api_key_id=owner.key_id,
                key=f"old-{uuid.uuid4()}",
                request_hash="h",
                expires_at=now - timedelta(seconds=1),
            )
        )
        live_key = f"live-{uuid.uuid4()}"
        session.add(
            IdempotencyKey(
                api_key_id=owner.key_id, key=live_key, request_hash="h", expires_at=now + timedelta(hours=1)
            )
        )
    assert (await rows_of(sessionmaker_, expired))["attempts"] == 1

    summary = await one_pass(maintenance)
    assert summary.deleted_jobs >= 2
    assert summary.deleted_objects >= 10
    assert summary.expired_keys >= 1
    assert summary.expired_deliveries >= 1  # the 8-day-old delivery of the job that lives on
    for gone in (expired, asked):
        assert await store.list_keys(job_prefix(gone)) == []
        assert not await factory.exists(gone)
        assert await rows_of(sessionmaker_, gone) == {
            "chunks": 0,
            "events": 0,
            "deliveries": 0,
            "attempts": 0,
        }
    for kept in (recent, old_but_active):
        assert len(await store.list_keys(job_prefix(kept))) == 5
        assert await factory.exists(kept)
        assert (await rows_of(sessionmaker_, kept))["chunks"] == 1
    assert (await rows_of(sessionmaker_, recent))["deliveries"] == 0
    async with sessionmaker_() as session:
        keys = set(
            await session.scalars(select(IdempotencyKey.key).where(IdempotencyKey.api_key_id == owner.key_id))
        )
    assert live_key in keys
    assert not any(key.startswith("old-") for key in keys)


async def test_chunk_objects_of_a_job_that_failed_while_chunking_are_swept_once(
    maintenance: MakeMaintenance,
    factory: JobFactory,
    store: ObjectStore,
    sessionmaker_: async_sessionmaker[AsyncSession],
) -> None:
    """A chunk upload that landed after the chunker's own cleanup (a PUT the server committed after
    the client gave up) is deleted once the job has been terminal for the grace time; jobs whose
    chunk objects are still someone's are left alone."""

    async def chunking_started(job_id: uuid.UUID) -> None:
        job = await factory.get(job_id)
        async with sessionmaker_() as session, session.begin():
            at = job.status_changed_at - timedelta(seconds=5)
            session.add(JobEvent(job_id=job_id, at=at, stage="chunker", to_status="CHUNKING"))

    failed = await factory.make(JobStatus.FAILED, age=AGED, error_code="invalid_audio")
    cancelled = await factory.make(JobStatus.CANCELLED, age=AGED)
    recent = await factory.make(JobStatus.FAILED, age=timedelta(minutes=1), error_code="invalid_audio")
    chunked = await factory.make(JobStatus.FAILED, age=AGED, chunks=[(ChunkStatus.FAILED, None)])
    never_chunked = await factory.make(JobStatus.FAILED, age=AGED, error_code="download_failed")
    for job_id in (failed, cancelled, recent, chunked):
        await chunking_started(job_id)
    for job_id in (failed, cancelled, recent, chunked, never_chunked):
        await store.put_bytes(original_key(job_id), b"x")
        for index in (0, 1):
            await store.put_bytes(chunk_audio_key(job_id, index), b"x")

    summary = await one_pass(maintenance)
    assert summary.orphan_chunk_objects >= 4
    for swept in (failed, cancelled):
        assert await store.list_keys(job_prefix(swept)) == [original_key(swept)], "the upload is kept"
        [event] = await factory.events(swept, stage="maintenance")
        assert event.detail == {"orphan_chunk_objects_deleted": 2}
    for kept in (recent, chunked, never_chunked):
        assert len(await store.list_keys(job_prefix(kept))) == 3
        assert await factory.events(kept, stage="maintenance") == []

    # Swept once: a later pass does not list the job again, even if something lands there.
    await store.put_bytes(chunk_audio_key(failed, 0), b"x")
    await one_pass(maintenance)
    assert len(await factory.events(failed, stage="maintenance")) == 1
    # ...until it ends again (retried, then failed while chunking once more).
    await factory.age_events(failed, by=2 * AGED)  # the sweep now lies before the job's last end
    await one_pass(maintenance)
    assert await store.list_keys(f"{job_prefix(failed)}chunks/") == []
    events = await factory.events(failed, stage="maintenance")
    assert [event.detail for event in events] == [
        {"orphan_chunk_objects_deleted": 2},
        {"orphan_chunk_objects_deleted": 1},
    ]


async def test_a_pass_that_finds_the_lock_taken_does_nothing(
    maintenance: MakeMaintenance, factory: JobFactory, engine: AsyncEngine
) -> None:
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED)
    lock_id = DEFAULT_LOCK_ID
    async with engine.connect() as holder:
        assert await holder.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id})
        assert await maintenance().run_pass() is None
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
    assert (await factory.get(job_id)).redrive_count == 0
    await one_pass(maintenance)  # released: the next pass works
    assert (await factory.get(job_id)).redrive_count == 1


async def test_a_stopped_pass_stops_early_and_says_so(
    maintenance: MakeMaintenance, factory: JobFactory
) -> None:
    job_id = await factory.make(JobStatus.UPLOADED, age=AGED)
    stopped = maintenance()
    stopped.stopping.set()
    summary = await stopped.run_pass()
    assert summary is not None
    assert summary.interrupted
    assert summary.line().endswith("interrupted=true")
    assert (await factory.get(job_id)).redrive_count == 0


def test_the_summary_line() -> None:
    assert Summary(redriven=2, deleted_objects=7).line() == (
        "redriven=2 failed_stalled=0 renotified=0 deleted_jobs=0 deleted_objects=7 orphan_chunk_objects=0 "
        "expired_keys=0 "
        "expired_deliveries=0 errors=0"
    )
