"""The chunker when its decoder dies half-way: ffmpeg is really killed (SIGKILL, as the OOM killer
would) after some chunks are already in S3; the job must be chunked again, not failed."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import pytest

from stt_common.db.models import Job, JobStatus
from stt_common.s3 import ObjectStore
from stt_devstack.harness import Jobs, wait_until
from tests.e2e.conftest import StartService
from tests.fixtures.audio import to_format, tone_wav

pytestmark = pytest.mark.slow

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
