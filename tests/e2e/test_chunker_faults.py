"""The chunker when something breaks half-way through a job: its ffmpeg really killed (SIGKILL, as the
OOM killer would) after some chunks are in S3, or S3 refusing a chunk while ffmpeg decodes. Either way
the job must be chunked again, not failed, and nothing may be left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from stt_common.db.models import Job, JobStatus
from stt_common.s3 import ObjectStore
from stt_common.settings import Settings
from stt_devstack.harness import Jobs, wait_until
from tests.e2e.conftest import StartService
from tests.fixtures.audio import to_format, tone_wav
from tests.s3_faults import FaultyS3Proxy

pytestmark = pytest.mark.slow

# The S3 client tries a request 4 times (max_attempts=3 retries) before the error reaches the chunker.
S3_ATTEMPTS = 4
CHUNK_SECONDS = 60
AUDIO_SECONDS = 330  # six chunks of 60 s with 5 s of overlap


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


async def _kill_ffmpeg_once_a_chunk_is_up(job_id: uuid.UUID, store: ObjectStore) -> int:
    """Freeze the job's ffmpeg as soon as it starts, let it run in 20 ms steps until a chunk is in S3,
    then SIGKILL it. Returns how many chunks were up when it died."""
    pid = None
    while pid is None:
        pids = _ffmpeg_pids(job_id)
        if pids:
            pid = pids[0]
            os.kill(pid, signal.SIGSTOP)
        else:
            await asyncio.sleep(0.002)
    try:
        while True:
            uploaded = await store.list_keys(f"jobs/{job_id}/chunks/")
            if uploaded:
                os.kill(pid, signal.SIGKILL)
                return len(uploaded)
            os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.02)
            os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        pytest.fail("ffmpeg finished before any chunk was uploaded: the test did not kill it mid-decode")


async def test_ffmpeg_killed_after_chunks_are_up_is_retried_not_failed(
    start_service: StartService, jobs: Jobs, store: ObjectStore, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    chunker = await start_service(
        "chunker",
        STT_WORK_DIR=str(work_dir),
        STT_CHUNK_SECONDS=str(CHUNK_SECONDS),
        STT_CHUNK_OVERLAP_SECONDS="5",
        STT_CHUNK_SEARCH_WINDOW_SECONDS="5",
    )
    audio = to_format(tone_wav(tmp_path / "tone.wav", AUDIO_SECONDS), tmp_path / "tone.mp3", "mp3")
    job_id = uuid.uuid4()
    killer = asyncio.create_task(_kill_ffmpeg_once_a_chunk_is_up(job_id, store))
    await jobs.submit(audio, job_id=job_id)
    chunks_up_when_killed = await asyncio.wait_for(killer, timeout=120)
    assert chunks_up_when_killed >= 1

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
            STT_CHUNK_SECONDS=str(CHUNK_SECONDS),
            STT_CHUNK_OVERLAP_SECONDS="5",
            STT_CHUNK_SEARCH_WINDOW_SECONDS="5",
        )
        audio = to_format(tone_wav(tmp_path / "tone.wav", AUDIO_SECONDS), tmp_path / "tone.mp3", "mp3")
        job_id = uuid.uuid4()

        async def freeze_ffmpeg_when_s3_fails() -> int:
            while not (pids := _ffmpeg_pids(job_id)):
                await asyncio.sleep(0.002)
            pid = pids[0]
            os.kill(pid, signal.SIGSTOP)
            try:
                while not fault.failed:  # decode in 3 ms steps, giving the chunker time to plan and upload
                    os.kill(pid, signal.SIGCONT)
                    await asyncio.sleep(0.003)
                    os.kill(pid, signal.SIGSTOP)
                    await asyncio.sleep(0.05)
            except ProcessLookupError:
                pytest.fail("ffmpeg finished before chunk 1 was uploaded: nothing was tested")
            return pid

        freezer = asyncio.create_task(freeze_ffmpeg_when_s3_fails())
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
