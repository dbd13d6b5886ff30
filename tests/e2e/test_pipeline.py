"""The whole pipeline as separate processes on the real stack, with the real embedded provider.

Jobs enter as the ingest service leaves them (row UPLOADED, original in S3, trigger on
`stt.jobs.submitted`), so these tests exercise the stages alone; the REST path has its own tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from stt_common.db.models import ChunkStatus, JobStatus
from stt_common.s3 import ObjectStore, chunk_result_key, result_key
from stt_devstack.wer import wer
from tests.e2e.conftest import Jobs, ServiceProcess, StartService, unmatched_runs
from tests.fixtures.audio import (
    ESPEAK_VOICE,
    ESPEAK_WPM,
    concat_wavs,
    espeak_wav,
    librivox_wavs,
    to_format,
    varied_sentences,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.slow


def chunks_of(document: dict) -> list[dict]:  # type: ignore[type-arg]
    chunks: list[dict] = document["chunks"]  # type: ignore[type-arg]
    return chunks


@pytest.fixture(scope="module")
def librivox_long(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """~6.5 minutes of real read speech (the LibriVox samples, repeated) and its reference."""
    samples = librivox_wavs()
    assert samples, "pocketsphinx-testdata is not installed (make test installs it)"
    rounds = 16
    path = tmp_path_factory.mktemp("librivox") / "librivox.wav"
    concat_wavs([p for _ in range(rounds) for p, _ in samples], path, gap_seconds=0.7)
    reference = " ".join(ref for _ in range(rounds) for _, ref in samples)
    return path, reference


async def completed_document(jobs: Jobs, store: ObjectStore, job_id: uuid.UUID, timeout: float = 300) -> dict:  # type: ignore[type-arg]
    job = await jobs.wait_terminal(job_id, timeout=timeout)
    assert job.status == JobStatus.COMPLETED, (job.error_code, job.error_message)
    document: dict = json.loads(await store.get_bytes(result_key(job_id, "json")))  # type: ignore[type-arg]
    return document


async def test_real_speech_over_two_chunks(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, librivox_long: tuple[Path, str]
) -> None:
    audio, reference = librivox_long
    job_id = await jobs.submit(audio, options={"chunk_seconds": 300})  # the job's own length
    document = await completed_document(jobs, store, job_id)
    job = await jobs.get(job_id)
    assert job.chunks_total == 2
    assert wer(reference, document["text"]) <= 0.15
    [decision] = document["quality"]["merge_decisions"]
    assert decision["method"] == "word_alignment"
    # No phrase doubled or dropped at the boundary.
    for seconds, run in unmatched_runs(reference, document):
        assert run < 4 or abs(seconds - decision["cut_seconds"]) > 15, (seconds, run, decision)
    for fmt in ("txt", "srt", "vtt"):
        assert (await store.get_bytes(result_key(job_id, fmt))).strip()
    assert document["segments"][0]["words"]


async def test_video_file(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, tmp_path: Path
) -> None:
    samples = librivox_wavs()
    wav = tmp_path / "speech.wav"
    concat_wavs([p for p, _ in samples], wav, gap_seconds=0.5)
    video = to_format(wav, tmp_path / "talk.mp4", "mp4")
    job_id = await jobs.submit(video)
    document = await completed_document(jobs, store, job_id)
    assert wer(" ".join(ref for _, ref in samples), document["text"]) <= 0.2


async def test_corrupt_audio_fails_with_invalid_audio(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, tmp_path: Path
) -> None:
    bogus = tmp_path / "song.mp3"
    bogus.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(50_000))
    job_id = await jobs.submit(bogus)
    job = await jobs.wait_terminal(job_id, timeout=60)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "invalid_audio"
    assert job.error_message
    assert "could not be decoded" in job.error_message


async def test_cancel_during_transcription_stops_the_job(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, tmp_path: Path
) -> None:
    from stt_common.db.jobs import transition_job
    from stt_common.db.models import ACTIVE_JOB_STATUSES

    audio = tmp_path / "long.wav"
    espeak_wav(audio, varied_sentences(280), gap_seconds=0.8, voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM)
    job_id = await jobs.submit(audio)
    await jobs.wait_status(job_id, JobStatus.TRANSCRIBING)

    async def one_chunk_done() -> bool:
        return "COMPLETED" in await chunk_statuses(jobs, job_id)

    await wait_until(one_chunk_done, timeout=180, what="a chunk transcribed")
    async with jobs.sessions() as session:  # what POST /jobs/{id}/cancel does
        assert await transition_job(
            session,
            job_id,
            JobStatus.CANCELLED,
            allowed_from=ACTIVE_JOB_STATUSES,
            stage="test",
            error_code="cancelled",
        )
        await session.commit()
    await asyncio.sleep(40)  # long enough for the rest of the job to have run, had it continued
    job = await jobs.get(job_id)
    assert job.status == JobStatus.CANCELLED
    statuses = await chunk_statuses(jobs, job_id)
    assert statuses.count("PENDING") >= 2, statuses  # the rest was never transcribed
    for index, status in enumerate(statuses):
        if status == "PENDING":
            assert not await store.exists(chunk_result_key(job_id, index))
    assert not await store.exists(result_key(job_id, "json"))
    async with jobs.sessions() as session:
        to_statuses = (
            (
                await session.execute(
                    text("SELECT to_status FROM job_events WHERE job_id = :id AND to_status IS NOT NULL"),
                    {"id": job_id},
                )
            )
            .scalars()
            .all()
        )
    assert "COMPLETED" not in to_statuses


async def chunk_statuses(jobs: Jobs, job_id: uuid.UUID) -> list[str]:
    async with jobs.sessions() as session:
        rows = await session.execute(
            text("SELECT status FROM chunks WHERE job_id = :id ORDER BY chunk_index"), {"id": job_id}
        )
        return [row[0] for row in rows]


async def test_killing_a_transcriber_mid_chunk_loses_nothing(
    pipeline: dict[str, ServiceProcess],
    jobs: Jobs,
    store: ObjectStore,
    tmp_path: Path,
    start_service: StartService,
) -> None:
    second = await start_service("transcriber", STT_LEASE_SECONDS="12", STT_LEASE_RENEW_SECONDS="3")
    audio = tmp_path / "long.wav"
    # ~11 minutes: four chunks, so both transcribers are busy at once.
    sentences = varied_sentences(150)
    espeak_wav(audio, sentences, gap_seconds=0.8, voice=ESPEAK_VOICE, words_per_minute=ESPEAK_WPM)
    job_id = await jobs.submit(audio)

    async def two_processing() -> bool:
        return (await chunk_statuses(jobs, job_id)).count(ChunkStatus.PROCESSING) >= 2

    await wait_until(two_processing, timeout=120, what="both transcribers busy")
    second.kill(signal.SIGKILL)  # mid-chunk, no chance to clean up
    document = await completed_document(jobs, store, job_id, timeout=600)
    assert wer(" ".join(sentences), document["text"]) <= 0.2
    async with jobs.sessions() as session:
        completions = await session.scalar(
            text("SELECT count(*) FROM job_events WHERE job_id = :id AND to_status = 'COMPLETED'"),
            {"id": job_id},
        )
        attempts = (
            (
                await session.execute(
                    text("SELECT attempts FROM chunks WHERE job_id = :id ORDER BY chunk_index"),
                    {"id": job_id},
                )
            )
            .scalars()
            .all()
        )
    assert completions == 1
    assert max(attempts) >= 2  # the killed transcriber's chunk was claimed again


async def test_chained_mode_passes_the_previous_chunk_as_context(
    pipeline: dict[str, ServiceProcess], jobs: Jobs, store: ObjectStore, librivox_long: tuple[Path, str]
) -> None:
    audio, reference = librivox_long
    job_id = await jobs.submit(audio, context_mode="chained")
    document = await completed_document(jobs, store, job_id)
    assert wer(reference, document["text"]) <= 0.15
    first = json.loads(await store.get_bytes(chunk_result_key(job_id, 0)))
    second = json.loads(await store.get_bytes(chunk_result_key(job_id, 1)))
    assert first["context_text"] == ""
    last_three = " ".join(s["text"] for s in first["transcript"]["segments"][-3:])
    assert second["context_text"] == last_three
