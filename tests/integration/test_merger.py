"""The merger's handler against real Postgres/S3/Kafka: the result files, exactly-once completion,
cancelled jobs left alone, and unreadable chunk results failing the job instead of the stage."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, ChunkStatus, Job, JobStatus
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic
from stt_common.runner import Outcome
from stt_common.s3 import ObjectStore, chunk_result_key, result_key
from stt_common.settings import Settings
from stt_common.transcript import ChunkTranscript, Segment, Word
from stt_merger.handler import MergerHandler

SENTENCE = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


def chunk_transcript(offset: float, start: float, end: float) -> ChunkTranscript:
    """Words every 0.5 s of absolute time in [start, end), expressed relative to the chunk."""
    words = []
    t = start
    while t + 0.4 <= end:
        index = round(t * 2)
        words.append(Word(start=t - offset, end=t + 0.4 - offset, text=f"{SENTENCE[index % 9]}{index}"))
        t += 0.5
    return ChunkTranscript(
        provider="test",
        language="en",
        segments=[
            Segment(
                start=words[0].start, end=words[-1].end, text=" ".join(w.text for w in words), words=words
            )
        ],
    )


@pytest.fixture
async def handler(
    settings: Settings, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> AsyncIterator[MergerHandler]:
    async with EventProducer(settings, client_id="test-merger") as producer:
        yield MergerHandler(sessionmaker_, store, producer)


async def merging_job(
    sessions: async_sessionmaker[AsyncSession], store: ObjectStore, *, write_results: bool
) -> uuid.UUID:
    job_id = uuid.uuid4()
    windows = [(0.0, 30.0), (25.0, 60.0)]
    async with sessions() as session:
        session.add(
            Job(id=job_id, status=JobStatus.MERGING, provider="test", chunks_total=2, duration_seconds=60)
        )
        await session.flush()
        for index, (start, end) in enumerate(windows):
            session.add(
                Chunk(
                    job_id=job_id,
                    chunk_index=index,
                    start_seconds=start,
                    end_seconds=end,
                    status=ChunkStatus.COMPLETED,
                )
            )
        await session.commit()
    if write_results:
        for index, (start, end) in enumerate(windows):
            document = {
                "transcript": chunk_transcript(start, start, end).model_dump(mode="json"),
                "tries": [],
            }
            await store.put_bytes(chunk_result_key(job_id, index), json.dumps(document).encode())
    return job_id


def trigger(job_id: uuid.UUID) -> Envelope:
    return Envelope.for_topic(Topic.JOBS_TRANSCRIBED, job_id, producer="test")


async def job_of(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    async with sessions() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id))
        assert job is not None
        return job


async def test_merge_writes_every_format_once_and_completes_once(
    handler: MergerHandler, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    job_id = await merging_job(sessionmaker_, store, write_results=True)
    assert await handler(trigger(job_id)) is Outcome.OK
    assert (await job_of(sessionmaker_, job_id)).status == JobStatus.COMPLETED
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    tokens = document["text"].split()
    assert tokens == [f"{SENTENCE[i % 9]}{i}" for i in range(len(tokens))]  # every word once, in order
    assert len(tokens) == 120
    assert (await store.get_bytes(result_key(job_id, "srt"))).startswith(b"1\n00:00:00,000 --> ")
    assert (await store.get_bytes(result_key(job_id, "vtt"))).startswith(b"WEBVTT")
    assert await handler(trigger(job_id)) is Outcome.DUPLICATE  # redelivery: no second completion
    async with sessionmaker_() as session:
        completions = await session.scalar(
            text("SELECT count(*) FROM job_events WHERE job_id = :id AND to_status = 'COMPLETED'"),
            {"id": job_id},
        )
    assert completions == 1


async def test_a_cancelled_job_is_never_completed(
    handler: MergerHandler, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    job_id = await merging_job(sessionmaker_, store, write_results=True)
    async with sessionmaker_() as session:
        await session.execute(text("UPDATE jobs SET status = 'CANCELLED' WHERE id = :id"), {"id": job_id})
        await session.commit()
    assert await handler(trigger(job_id)) is Outcome.DUPLICATE
    assert (await job_of(sessionmaker_, job_id)).status == JobStatus.CANCELLED
    assert not await store.exists(result_key(job_id, "json"))


async def test_missing_chunk_results_fail_the_job_not_the_stage(
    handler: MergerHandler, sessionmaker_: async_sessionmaker[AsyncSession], store: ObjectStore
) -> None:
    job_id = await merging_job(sessionmaker_, store, write_results=False)
    assert await handler(trigger(job_id)) is Outcome.OK
    job = await job_of(sessionmaker_, job_id)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "unknown")
    assert "retry the job" in (job.error_message or "")
