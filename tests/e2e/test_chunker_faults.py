"""The chunker when something breaks half-way through a job: its ffmpeg really killed (SIGKILL, as the
OOM killer would) after some chunks are in S3, or S3 refusing a chunk while ffmpeg decodes. Either way
the job must be chunked again, not failed, and nothing may be left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import Job, JobStatus
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.harness import Jobs, wait_until
from stt_ingest.keys import create_key
from tests.e2e.conftest import StartService
from tests.fixtures.audio import to_format, tone_wav
from tests.s3_faults import FaultyS3Proxy

pytestmark = pytest.mark.slow

# The S3 client tries a request 4 times (max_attempts=3 retries) before the error reaches the chunker.
S3_ATTEMPTS = 4
CHUNK_SECONDS = 60
AUDIO_SECONDS = 330  # six chunks of 60 s with 5 s of overlap
CHUNKING = {
    "STT_CHUNK_SECONDS": str(CHUNK_SECONDS),
    "STT_CHUNK_OVERLAP_SECONDS": "5",
    "STT_CHUNK_SEARCH_WINDOW_SECONDS": "5",
}


def _tone_mp3(tmp_path: Path) -> Path:
    return to_format(tone_wav(tmp_path / "tone.wav", AUDIO_SECONDS), tmp_path / "tone.mp3", "mp3")


def _ffmpeg_pids(job_id: uuid.UUID) -> list[int]:
    """ffmpeg processes decoding this job (their command line names the job's work dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ffmpeg") and str(job_id).encode() in b" ".join(argv):
            pids.append(int(entry))
    return pids


async def _step_ffmpeg_until(job_id: uuid.UUID, done: Callable[[], Awaitable[bool]], why: str) -> int:
    """Freeze the job's ffmpeg as soon as it starts and let it decode in 3 ms steps, giving the chunker
    time to plan and upload between them, until `done()`. Returns its pid, left frozen."""
    while not (pids := _ffmpeg_pids(job_id)):
        await asyncio.sleep(0.002)
    pid = pids[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        while not await done():
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.003)
            os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(0.05)
    except ProcessLookupError:
        pytest.fail(f"ffmpeg finished before {why}: nothing was tested")
    return pid


def _a_chunk_is_up(store: ObjectStore, job_id: uuid.UUID) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await store.list_keys(f"jobs/{job_id}/chunks/"))

    return check


async def test_ffmpeg_killed_after_chunks_are_up_is_retried_not_failed(
    start_service: StartService, jobs: Jobs, store: ObjectStore, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    chunker = await start_service(
        "chunker",
        STT_WORK_DIR=str(work_dir),
        **CHUNKING,
    )
    audio = _tone_mp3(tmp_path)
    job_id = uuid.uuid4()
    stepping = asyncio.create_task(
        _step_ffmpeg_until(job_id, _a_chunk_is_up(store, job_id), "a chunk was up")
    )
    await jobs.submit(audio, job_id=job_id)
    os.kill(await asyncio.wait_for(stepping, timeout=120), signal.SIGKILL)

    async def chunked_or_failed() -> Job | None:
        job = await jobs.get(job_id)
        return job if job.status in (JobStatus.TRANSCRIBING, JobStatus.FAILED) else None

    job = await wait_until(chunked_or_failed, timeout=120, what="the job chunked (or failed)")
    assert job.status == JobStatus.TRANSCRIBING, (job.error_code, job.error_message)
    assert job.chunks_total == 6
    keys = sorted(await store.list_keys(f"jobs/{job_id}/chunks/"))
    assert keys == [f"jobs/{job_id}/chunks/{i:04d}.wav" for i in range(6)]

    async def said_why() -> bool:
        return "ffmpeg was killed by SIGKILL" in chunker.log()

    await wait_until(said_why, timeout=10, what="the chunker's log naming the killed decoder")
    assert "handler failed, retrying" in chunker.log()
    assert _ffmpeg_pids(job_id) == [], "no decoder left behind"
    assert list(work_dir.iterdir()) == [], "every attempt's work dir is removed"


async def test_an_s3_outage_mid_decode_kills_ffmpeg_and_the_job_is_chunked_again(
    start_service: StartService, jobs: Jobs, store: ObjectStore, settings: Settings, tmp_path: Path
) -> None:
    """Chunk 1's upload gets 503 SlowDown on every S3 client attempt while ffmpeg is frozen: the chunker
    must kill the frozen ffmpeg itself (it would never finish) and chunk the job again once S3 answers."""
    async with FaultyS3Proxy(settings.s3_endpoint_url or "") as proxy:
        fault = proxy.fail(
            lambda method, path: method == "PUT" and path.endswith("/chunks/0001.wav"), times=S3_ATTEMPTS
        )
        work_dir = tmp_path / "work"
        work_dir.mkdir()
        chunker = await start_service(
            "chunker",
            STT_S3_ENDPOINT_URL=proxy.url,
            STT_WORK_DIR=str(work_dir),
            **CHUNKING,
        )
        audio = _tone_mp3(tmp_path)
        job_id = uuid.uuid4()

        async def upload_refused() -> bool:
            return bool(fault.failed)

        freezer = asyncio.create_task(_step_ffmpeg_until(job_id, upload_refused, "chunk 1 was uploaded"))
        await jobs.submit(audio, job_id=job_id)
        frozen_pid = await asyncio.wait_for(freezer, timeout=120)

        async def frozen_ffmpeg_gone() -> bool:
            return frozen_pid not in _ffmpeg_pids(job_id)

        await wait_until(frozen_ffmpeg_gone, timeout=30, what="the chunker killing its frozen ffmpeg")

        async def chunked_or_failed() -> Job | None:
            job = await jobs.get(job_id)
            return job if job.status in (JobStatus.TRANSCRIBING, JobStatus.FAILED) else None

        job = await wait_until(chunked_or_failed, timeout=120, what="the job chunked (or failed)")
    assert job.status == JobStatus.TRANSCRIBING, (job.error_code, job.error_message)
    assert job.chunks_total == 6
    assert len(fault.failed) == S3_ATTEMPTS, "every botocore attempt of the first try was refused"
    keys = sorted(await store.list_keys(f"jobs/{job_id}/chunks/"))
    assert keys == [f"jobs/{job_id}/chunks/{i:04d}.wav" for i in range(6)]
    log = chunker.log()
    assert "handler failed, retrying" in log
    assert "SlowDown" in log
    assert _ffmpeg_pids(job_id) == []
    assert list(work_dir.iterdir()) == []


async def test_a_recording_over_the_length_limit_fails_and_leaves_no_chunks(
    start_service: StartService, jobs: Jobs, store: ObjectStore, tmp_path: Path
) -> None:
    """The limit is only known to be passed once the decode reaches it, after the first chunks are up:
    the job fails with a message naming the limit, and those chunks are deleted."""
    await start_service(
        "chunker",
        STT_MAX_AUDIO_SECONDS="200",
        **CHUNKING,
    )
    audio = _tone_mp3(tmp_path)
    job_id = uuid.uuid4()
    stepping = asyncio.create_task(
        _step_ffmpeg_until(job_id, _a_chunk_is_up(store, job_id), "a chunk was up")
    )
    await jobs.submit(audio, job_id=job_id)
    os.kill(await asyncio.wait_for(stepping, timeout=120), signal.SIGCONT)  # on to the limit
    job = await jobs.wait_terminal(job_id, timeout=120)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "invalid_audio"
    assert job.error_message is not None
    assert job.error_message.startswith("the recording is longer than the limit of 3.33 minutes: split")
    await _chunk_objects_deleted(store, job_id)
    assert await store.list_keys(f"jobs/{job_id}/original") != [], "the upload itself is kept for retry"


async def test_an_api_keys_own_length_limit_wins_over_the_service_default(
    start_service: StartService,
    jobs: Jobs,
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    """A key created with `--max-audio-hours` has its jobs held to that limit, not the chunker's."""
    await start_service("chunker", STT_MAX_AUDIO_SECONDS="200", **CHUNKING)
    key = await create_key(sessionmaker_, name="short-only", tenant="t", max_audio_seconds=100.0)
    job_id = await jobs.submit(_tone_mp3(tmp_path), api_key_id=key.id)
    job = await jobs.wait_terminal(job_id, timeout=120)
    assert (job.status, job.error_code) == (JobStatus.FAILED, "invalid_audio")
    assert job.error_message is not None
    assert "longer than the limit of 1.67 minutes" in job.error_message
    assert "--max-audio-hours" in job.error_message


async def test_a_chunk_put_that_lands_after_the_failure_is_still_deleted(
    start_service: StartService, jobs: Jobs, store: ObjectStore, settings: Settings, tmp_path: Path
) -> None:
    """The race CI once hit: the recording passes the length limit while a chunk's PUT is on its way,
    and S3 commits that PUT only after the chunker's cleanup had listed the prefix. Every chunk PUT is
    held 3 s at a proxy (and passed on even if the chunker gave up on it): once the job has failed and
    every held PUT has reached S3, no chunk object may be left."""
    async with FaultyS3Proxy(settings.s3_endpoint_url or "") as proxy:
        held = proxy.delay(lambda method, path: method == "PUT" and "/chunks/" in path, seconds=3)
        await start_service(
            "chunker",
            STT_S3_ENDPOINT_URL=proxy.url,
            STT_MAX_AUDIO_SECONDS="200",
            **CHUNKING,
        )
        audio = _tone_mp3(tmp_path)
        job_id = uuid.uuid4()

        async def a_put_is_held() -> bool:
            return bool(held.held)

        stepping = asyncio.create_task(_step_ffmpeg_until(job_id, a_put_is_held, "a chunk PUT was sent"))
        await jobs.submit(audio, job_id=job_id)
        os.kill(await asyncio.wait_for(stepping, timeout=120), signal.SIGCONT)  # on to the limit
        job = await jobs.wait_terminal(job_id, timeout=120)

        async def every_put_reached_s3() -> bool:
            return len(held.passed_on) == len(held.held)

        await wait_until(every_put_reached_s3, timeout=60, what="every held chunk PUT passed on to S3")
    assert job.status == JobStatus.FAILED
    assert job.error_code == "invalid_audio"
    assert held.passed_on, "a chunk PUT was in flight when the job failed"
    await _chunk_objects_deleted(store, job_id)


async def _chunk_objects_deleted(store: ObjectStore, job_id: uuid.UUID) -> None:
    """The chunker fails the job first (so transcribers of chunks it already announced stop), then
    deletes the chunks: wait for that cleanup, which a PUT landing after it would outlive."""

    async def no_chunk_objects() -> bool:
        return await store.list_keys(f"jobs/{job_id}/chunks/") == []

    await wait_until(no_chunk_objects, timeout=30, what="the failed job's chunk objects deleted")
