"""The language of a job that names none is detected once, on the first chunk, and pinned for every
chunk; the result says which, and how sure the model was. Its own module: its stages (short chunks,
two chunks at a time) must be the only ones consuming the topics while it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common.db.models import JobEvent, JobStatus
from stt_common.s3 import ObjectStore, chunk_result_key, result_key
from stt_devstack.harness import Jobs
from stt_devstack.wer import wer
from tests.e2e.conftest import StartService
from tests.fixtures.audio import concat_wavs, librivox_wavs

pytestmark = pytest.mark.slow


async def test_a_language_detected_once_is_pinned_for_every_chunk(
    start_service: StartService,
    jobs: Jobs,
    store: ObjectStore,
    sessionmaker_: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    samples = librivox_wavs()
    audio = tmp_path / "speech.wav"
    concat_wavs([p for _ in range(3) for p, _ in samples], audio, gap_seconds=0.7)
    reference = " ".join(ref for _ in range(3) for _, ref in samples)
    for name, env in (
        ("chunker", {"STT_CHUNK_SECONDS": "30", "STT_CHUNK_OVERLAP_SECONDS": "5"}),
        ("transcriber", {"STT_MAX_IN_FLIGHT": "2"}),  # chunks race each other for the pin
        ("merger", {}),
    ):
        await start_service(name, **env)
    job_id = await jobs.submit(audio, model="base")
    job = await jobs.wait_terminal(job_id, timeout=600)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    assert (job.chunks_total or 0) >= 3

    async with sessionmaker_() as session:
        pins = list(
            await session.scalars(
                select(JobEvent.detail).where(
                    JobEvent.job_id == job_id, JobEvent.detail.has_key("detected_language")
                )
            )
        )
    assert len(pins) == 1, "detected once, by whichever chunk came first"
    assert pins[0]["detected_language"] == "en"
    for index in range(job.chunks_total or 0):
        chunk = json.loads(await store.get_bytes(chunk_result_key(job_id, index)))
        assert chunk["transcript"]["language"] == "en", index
        assert chunk["transcript"]["model"] == "base"
    document = json.loads(await store.get_bytes(result_key(job_id, "json")))
    assert document["language"] == "en"
    assert document["language_probability"] == pins[0]["language_probability"] > 0.5
    assert document["model"] == "base"
    assert wer(reference, document["text"]) <= 0.25
    assert all(segment["avg_logprob"] < 0 for segment in document["segments"])
    assert 0 <= document["quality"]["low_confidence_share"] < 0.5
