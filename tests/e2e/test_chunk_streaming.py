"""Chunks go to the transcribers while the chunker is still decoding the recording: a long recording's
first chunk is transcribed before its last one is cut. And whichever finishes last, the chunker (its
`CHUNKING → TRANSCRIBING`) or the transcribers (the last chunk done), starts the merge exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Chunk, ChunkStatus, Job, JobEvent, JobStatus
from stt_common.messages import Topic
from stt_devstack.harness import Jobs, wait_until
from tests.e2e.conftest import ServiceProcess, StartService
from tests.e2e.test_chunker_faults import CHUNKING, _tone_mp3
from tests.e2e.test_chunker_faults import _step_ffmpeg_until as step_ffmpeg_until
from tests.fakes.hispeech_server import FakeHiSpeech
from tests.fixtures.audio import to_format, tone_wav

pytestmark = pytest.mark.slow

KEY = "hispeech-streaming-key"


@pytest.fixture(scope="module")
def vendor() -> Iterator[FakeHiSpeech]:
    with FakeHiSpeech(api_key=KEY, latency=0.1) as fake:
        yield fake


@pytest.fixture
def start(start_service: StartService, vendor: FakeHiSpeech) -> StartService:
    """Stages with the job's vendor configured (a fake: the local model is too slow for the point)."""

    async def start(name: str, **overrides: str) -> ServiceProcess:
        return await start_service(
            name,
            STT_HISPEECH_API_KEY=KEY,
            STT_HISPEECH_BASE_URL=vendor.base_url,
            **{**CHUNKING, **overrides},
        )

    return start


async def _transitions(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> list[JobEvent]:
    async with sessions() as session:
        rows = await session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.to_status.is_not(None))
            .order_by(JobEvent.id)
        )
        return list(rows)


async def test_the_first_chunk_is_transcribed_while_the_recording_is_still_decoding(
    start: StartService,
    jobs: Jobs,
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    # The server's chunk length is 300 s; the job asks for 60 s (six chunks).
    await asyncio.gather(start("chunker", STT_CHUNK_SECONDS="300"), start("transcriber"), start("merger"))
    audio = _tone_mp3(tmp_path)
    job_id = uuid.uuid4()

    async def a_chunk_done_while_chunking() -> bool:
        async with sessionmaker_() as session:
            status = await session.scalar(select(Job.status).where(Job.id == job_id))
            done = await session.scalar(
                select(func.count())
                .select_from(Chunk)
                .where(Chunk.job_id == job_id, Chunk.status == ChunkStatus.COMPLETED)
            )
        return status == JobStatus.CHUNKING and bool(done)

    # ffmpeg decodes in small steps (frozen in between) until a chunk is transcribed: that can only
    # happen if chunks leave the chunker before the decode ends.
    stepping = asyncio.create_task(
        step_ffmpeg_until(job_id, a_chunk_done_while_chunking, "a chunk was transcribed")
    )
    await jobs.submit(audio, job_id=job_id, provider="hispeech", options={"chunk_seconds": 60})
    os.kill(await asyncio.wait_for(stepping, timeout=180), signal.SIGCONT)
    job = await jobs.wait_terminal(job_id, timeout=180)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    assert job.chunks_total == 6

    events = await _transitions(sessionmaker_, job_id)
    chunked = next(event for event in events if event.to_status == JobStatus.TRANSCRIBING)
    assert chunked.stage == "chunker"
    assert chunked.detail["chunk_seconds"] == 60
    assert 0 < chunked.detail["first_chunk_ready_seconds"] < chunked.detail["chunking_seconds"]
    assert [event.to_status for event in events].count(JobStatus.MERGING) == 1


async def test_the_chunker_starts_the_merge_when_every_chunk_was_done_before_it_finished(
    start: StartService,
    jobs: Jobs,
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    """The state a chunker leaves when it dies after announcing its last chunk, before its final
    commit, while the transcribers finish every chunk: CHUNKING, every chunk done. The chunker that
    takes the job again must move it to MERGING itself (no transcriber completion is left to)."""
    await asyncio.gather(start("chunker"), start("transcriber"))
    # Two chunks of 60 s are enough: the point is who moves the job on, not how many there are.
    audio = to_format(tone_wav(tmp_path / "tone.wav", 120), tmp_path / "tone.mp3", "mp3")
    job_id = await jobs.submit(audio, provider="hispeech")
    await jobs.wait_status(job_id, JobStatus.MERGING, timeout=180)  # no merger runs yet
    async with sessionmaker_() as session, session.begin():
        await session.execute(
            update(Job).where(Job.id == job_id).values(status=JobStatus.CHUNKING, chunks_total=None)
        )
    await jobs.producer.trigger(Topic.JOBS_SUBMITTED, job_id, producer="test")

    async def merging_again() -> bool:
        events = await _transitions(sessionmaker_, job_id)
        return [event.to_status for event in events].count(JobStatus.MERGING) == 2

    await wait_until(merging_again, timeout=120, what="the chunker moving the job to MERGING")
    events = await _transitions(sessionmaker_, job_id)
    assert [(event.stage, event.to_status) for event in events[-2:]] == [
        ("chunker", JobStatus.TRANSCRIBING),
        ("chunker", JobStatus.MERGING),
    ]
    await start("merger")
    job = await jobs.wait_terminal(job_id, timeout=120)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    assert job.chunks_total == 2
