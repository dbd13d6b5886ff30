"""Steps several stages share: loading a job, failing it for good, telling the notifier, the job's
pinned language.

Kept here because the chunker, the transcriber and the maintenance job all end jobs the same way:
one conditional transition to FAILED, then a `stt.jobs.finished` trigger so webhooks hear of it.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common import metrics
from stt_common.db.jobs import transition_job
from stt_common.db.models import ACTIVE_JOB_STATUSES, Chunk, ChunkStatus, Job, JobEvent, JobStatus
from stt_common.errors import NOT_RETRYABLE, ErrorCode, next_step
from stt_common.kafka import EventProducer
from stt_common.messages import Envelope, Topic


async def load_job(sessions: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job | None:
    async with sessions() as session:
        job: Job | None = await session.scalar(select(Job).where(Job.id == job_id))
        return job


# The timeline entry (detail key) that pins a job's detected language: written once by the
# transcriber that first detects it, read by every other chunk's transcriber and by the merger.
LANGUAGE_PIN = "detected_language"


async def load_language_pin(session: AsyncSession, job_id: uuid.UUID) -> tuple[str, float] | None:
    """(language, probability) detected for a job that named none, or None before it is pinned."""
    detail = await session.scalar(
        select(JobEvent.detail)
        .where(JobEvent.job_id == job_id, JobEvent.detail.has_key(LANGUAGE_PIN))
        .order_by(JobEvent.id)
        .limit(1)
    )
    if detail is None:
        return None
    return str(detail[LANGUAGE_PIN]), float(detail.get("language_probability") or 0.0)


async def fail_job(
    sessions: async_sessionmaker[AsyncSession],
    producer: EventProducer,
    job_id: uuid.UUID,
    *,
    code: ErrorCode,
    message: str,
    stage: str,
) -> bool:
    """Mark an active job FAILED with a classified code and emit `finished`; False if it was not active."""
    async with sessions() as session:
        previous = await transition_job(
            session,
            job_id,
            JobStatus.FAILED,
            allowed_from=ACTIVE_JOB_STATUSES,
            stage=stage,
            detail={"error_code": code.value, "error_message": message[:2000]},
            error_code=code.value,
            error_message=message[:2000],
        )
        await session.commit()
    if previous is None:
        return False
    metrics.JOBS_FINISHED.labels(JobStatus.FAILED.value, code.value).inc()
    await producer.emit(Topic.JOBS_FINISHED, Envelope.for_topic(Topic.JOBS_FINISHED, job_id, producer=stage))
    return True


async def emit_pending_chunks(
    sessions: async_sessionmaker[AsyncSession], producer: EventProducer, job: Job, *, stage: str
) -> int:
    """Emit triggers for a job's PENDING chunks: all of them (parallel) or the first (chained).

    Safe to repeat: a transcriber claims a chunk conditionally, so an extra trigger is a no-op."""
    async with sessions() as session:
        pending = list(
            await session.scalars(
                select(Chunk.chunk_index)
                .where(Chunk.job_id == job.id, Chunk.status == ChunkStatus.PENDING)
                .order_by(Chunk.chunk_index)
            )
        )
    if job.context_mode == "chained":
        pending = pending[:1]
    for index in pending:
        await producer.emit(
            Topic.CHUNKS_READY,
            Envelope.for_topic(Topic.CHUNKS_READY, job.id, producer=stage, chunk_index=index),
        )
    return len(pending)


def _stored_file(job: Job) -> bool:
    # An upload always is; a URL job only once its download was accepted (it has a size then).
    return job.source_url is None or job.size_bytes is not None


def same_bytes_would_fail(job: Job) -> bool:
    """A failed job another try cannot fix: its stored file is what failed (`invalid_audio`). A URL
    whose download was refused has no stored file: the source may serve other bytes next time."""
    return job.error_code in NOT_RETRYABLE and _stored_file(job)


def job_next_step(job: Job) -> str:
    """What the client can do about the job's error (API, webhook and CLI show the same text)."""
    return next_step(job.error_code or ErrorCode.UNKNOWN, job.id, stored_file=_stored_file(job))
