"""The transcriber's handler against real Postgres/S3/Kafka and a fake OpenAI-compatible vendor that
fails the ways vendors do (429 with Retry-After, 5xx, 401, garbage bodies, partial coverage)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, ChunkStatus, Job, JobStatus
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.runner import Outcome
from stt_common.s3 import ObjectStore, chunk_audio_key, chunk_result_key
from stt_common.settings import Settings
from stt_transcriber.handler import TranscriberHandler, job_prompt
from stt_transcriber.pool import ProviderPool
from stt_transcriber.settings import TranscriberSettings
from tests.fakes.openai_server import Failure, FakeOpenAI
from tests.fixtures.audio import tone_wav
from tests.helpers import wait_until

CHUNK_SECONDS = 40.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key="test-key") as server:
        yield server


@pytest.fixture(scope="module")
def chunk_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loud tone: every frame counts as speech for the coverage check."""
    return tone_wav(
        tmp_path_factory.mktemp("audio") / "chunk.wav", CHUNK_SECONDS, sample_rate=16000, codec="pcm_s16le"
    )


@pytest.fixture
async def handler(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore, fake: FakeOpenAI
) -> AsyncIterator[TranscriberHandler]:
    fake.reset()
    tx_settings = TranscriberSettings(
        **settings.model_dump(exclude={"service_name", "ops_port", "max_in_flight"}),
        openai_base_url=fake.base_url,
        openai_api_key="test-key",
        backoff_base_seconds=0.05,
        backoff_max_seconds=2.0,
        provider_timeout_seconds=5,
        lease_seconds=5,
        lease_renew_seconds=1,
    )
    pool = ProviderPool(tx_settings)
    async with EventProducer(tx_settings, client_id="test-transcriber") as producer:
        yield TranscriberHandler(tx_settings, sessionmaker_, store, producer, pool)
    await pool.aclose()


async def new_job(
    sessions: async_sessionmaker[AsyncSession],
    store: ObjectStore,
    wav: Path,
    options: dict[str, Any] | None = None,
) -> uuid.UUID:
    job_id = uuid.uuid4()
    async with sessions() as session:
        session.add(
            Job(
                id=job_id,
                status=JobStatus.TRANSCRIBING,
                provider="openai",
                chunks_total=1,
                options=options or {},
            )
        )
        await session.flush()
        session.add(Chunk(job_id=job_id, chunk_index=0, start_seconds=0, end_seconds=CHUNK_SECONDS))
        await session.commit()
    await store.upload_file(chunk_audio_key(job_id, 0), wav)
    return job_id


def trigger(job_id: uuid.UUID) -> Envelope:
    return Envelope.for_topic(Topic.CHUNKS_READY, job_id, producer="test", chunk_index=0)


async def state(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> tuple[Job, Chunk]:
    async with sessions() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id))
        chunk = await session.scalar(select(Chunk).where(Chunk.job_id == job_id))
        assert job is not None
        assert chunk is not None
        return job, chunk


async def test_success_completes_the_chunk_and_starts_the_merge(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    assert await handler(trigger(job_id)) is Outcome.OK
    job, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.COMPLETED
    assert job.status == JobStatus.MERGING  # the only chunk: this completion did the fan-in
    document = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    assert document["transcript"]["segments"]
    assert document["coverage_gaps"] == []
    # A redelivered trigger for the finished chunk calls nobody.
    requests = len(fake.requests())
    assert await handler(trigger(job_id)) is Outcome.DUPLICATE
    assert len(fake.requests()) == requests


async def test_the_jobs_prompt_and_vocabulary_reach_the_provider(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    options = {"prompt": "A talk about queues.", "vocabulary": ["Tansu", " Kafka ", "Tansu", ""]}
    job_id = await new_job(sessionmaker_, store, chunk_wav, options)
    fake.clear_requests()
    assert await handler(trigger(job_id)) is Outcome.OK
    [request] = fake.requests()
    assert request.prompt == "A talk about queues. Tansu, Kafka."
    assert job_prompt({"vocabulary": ["Yerevan"]}) == "Yerevan."
    assert job_prompt({"prompt": "  ", "vocabulary": []}) is None


@pytest.mark.parametrize(
    ("failures", "code"),
    [
        ([Failure.rate_limited(retry_after=1)], "rate_limited"),
        ([Failure.server_error(503), Failure.server_error(500)], "provider_unavailable"),
        ([Failure.garbage()], "provider_unavailable"),
    ],
)
async def test_transient_errors_are_retried(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
    failures: list[Failure],
    code: str,
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.fail(*failures)
    assert await handler(trigger(job_id)) is Outcome.OK
    _, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.COMPLETED
    document = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    calls = document["tries"][0]["calls"]
    assert [call.get("error_code") for call in calls] == [code] * len(failures) + [None]
    assert len(fake.requests()) == len(failures) + 1


async def test_retry_after_is_honoured(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.fail(Failure.rate_limited(retry_after=2))
    await handler(trigger(job_id))
    first, second = fake.requests()[-2:]
    assert second.received_at - first.received_at >= 1.9


async def test_auth_error_fails_the_job_at_once(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.fail(Failure.unauthorized())
    assert await handler(trigger(job_id)) is Outcome.OK
    job, chunk = await state(sessionmaker_, job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "auth_error")
    assert chunk.status == ChunkStatus.FAILED
    assert "test-key" not in (job.error_message or "")
    assert len(fake.requests()) == 1


async def test_retries_exhausted_fail_the_job_with_the_classified_code(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.fail(*[Failure.server_error(503)] * 5)
    assert await handler(trigger(job_id)) is Outcome.OK
    job, _ = await state(sessionmaker_, job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "provider_unavailable")
    assert len(fake.requests()) == 5


async def test_cancellation_stops_retries(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    from stt_common.db.jobs import transition_job

    handler._settings.backoff_base_seconds = 1.0  # time to cancel between tries
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.fail(*[Failure.server_error(503)] * 5)
    task = asyncio.create_task(handler(trigger(job_id)))
    await wait_until(lambda: len(fake.requests()) >= 1, timeout=10, what="first provider call")
    async with sessionmaker_() as session:
        await transition_job(
            session, job_id, JobStatus.CANCELLED, allowed_from={JobStatus.TRANSCRIBING}, stage="test"
        )
        await session.commit()
    assert await asyncio.wait_for(task, 30) is Outcome.OK
    job, chunk = await state(sessionmaker_, job_id)
    assert job.status == JobStatus.CANCELLED
    assert chunk.status == ChunkStatus.PENDING  # released, not failed, not completed
    assert len(fake.requests()) <= 2


async def test_a_speech_gap_is_retried_and_reported(
    handler: TranscriberHandler,
    sessionmaker_,
    store: ObjectStore,
    chunk_wav: Path,
    fake: FakeOpenAI,  # type: ignore[no-untyped-def]
) -> None:
    job_id = await new_job(sessionmaker_, store, chunk_wav)
    fake.transcript_for = lambda duration: [(0.0, 10.0, "only the start was heard")]
    try:
        assert await handler(trigger(job_id)) is Outcome.OK
    finally:
        fake.transcript_for = None
    document = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    assert len(document["tries"]) == 3  # the first try and 2 more
    assert document["coverage_gaps"] == [[10.0, 40.0]]
    assert "untranscribed" in document["warnings"][0]
    _, chunk = await state(sessionmaker_, job_id)
    assert chunk.status == ChunkStatus.COMPLETED
