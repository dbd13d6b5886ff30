"""Steps several stages share: loading a job, failing it for good, telling the notifier, the job's
pinned language, and what to emit to move a job on from where it stands.

Kept here because the chunker, the transcriber and the maintenance job all end jobs the same way:
one conditional transition to FAILED, then a `stt.jobs.finished` trigger so webhooks hear of it; and
the chunker, the maintenance re-drive and ingest's retry all resume a job the same way
(`resume_triggers`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence, Set
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from stt_common import metrics
from stt_common.db.jobs import transition_job
from stt_common.db.models import ACTIVE_JOB_STATUSES, Chunk, ChunkStatus, Job, JobEvent, JobStatus
from stt_common.errors import NOT_RETRYABLE, ErrorCode, next_step
from stt_common.kafka import EventProducer
from stt_common.messages import Topic


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
    await producer.trigger(Topic.JOBS_FINISHED, job_id, producer=stage)
    return True


@dataclass(frozen=True)
class ChunkView:
    """What `resume_triggers` needs of a chunk."""

    index: int
    completed: bool
    waiting: bool  # nobody holds it: PENDING, or PROCESSING under a lapsed lease


Trigger = tuple[Topic, int | None]  # a topic and the chunk index its envelope names (None: the job)


def resume_triggers(context_mode: str, chunks: Sequence[ChunkView], *, chunked: bool) -> list[Trigger]:
    """The triggers that move a job on from where its chunks stand (the one place this is decided):

    * not chunked yet (`chunks_total` unset: the chunker announces chunks while it still cuts later
      ones, so rows alone do not say the set is whole): `stt.jobs.submitted` (the chunker chunks it
      again; keys and rows are deterministic);
    * every chunk done: `stt.jobs.transcribed` (the merger);
    * else `stt.chunks.ready` for each chunk waiting for a transcriber; in chained mode only the first
      unfinished one, and only if it is waiting (each chunk's transcriber emits the next).

    Safe to repeat: every consumer claims its work conditionally, so an extra trigger is a no-op."""
    if not chunked or not chunks:
        return [(Topic.JOBS_SUBMITTED, None)]
    unfinished = [chunk for chunk in sorted(chunks, key=lambda c: c.index) if not chunk.completed]
    if not unfinished:
        return [(Topic.JOBS_TRANSCRIBED, None)]
    if context_mode == "chained":
        unfinished = unfinished[:1]
    return [(Topic.CHUNKS_READY, chunk.index) for chunk in unfinished if chunk.waiting]


async def start_merge_if_transcribed(session: AsyncSession, job_id: uuid.UUID, *, stage: str) -> bool:
    """Move a TRANSCRIBING job with no unfinished chunk to MERGING; True if this call did (the caller
    then emits `stt.jobs.transcribed` once it has committed).

    Called under the job's row lock by both parties that can be last: the transcriber after each
    chunk it completes, and the chunker once it has announced every chunk (`CHUNKING → TRANSCRIBING`),
    since transcribers may finish every chunk of a job while the chunker is still cutting it. The
    lock serialises them, so exactly one sees "none left" with the job TRANSCRIBING."""
    unfinished = await session.scalar(
        select(func.count())
        .select_from(Chunk)
        .where(Chunk.job_id == job_id, Chunk.status != ChunkStatus.COMPLETED)
    )
    if unfinished:
        return False
    moved = await transition_job(
        session, job_id, JobStatus.MERGING, allowed_from={JobStatus.TRANSCRIBING}, stage=stage
    )
    return moved is not None


async def chunk_views(session: AsyncSession, job_id: uuid.UUID) -> list[ChunkView]:
    lapsed = or_(Chunk.lease_expires_at.is_(None), Chunk.lease_expires_at <= func.now())
    waiting = or_(Chunk.status == ChunkStatus.PENDING, and_(Chunk.status == ChunkStatus.PROCESSING, lapsed))
    rows = await session.execute(
        select(Chunk.chunk_index, Chunk.status == ChunkStatus.COMPLETED, waiting).where(
            Chunk.job_id == job_id
        )
    )
    return [ChunkView(index, bool(completed), bool(is_waiting)) for index, completed, is_waiting in rows]


async def emit_resume_triggers(
    sessions: async_sessionmaker[AsyncSession],
    producer: EventProducer,
    job: Job,
    *,
    stage: str,
    skip: Set[int] = frozenset(),
) -> list[Trigger]:
    """Emit `resume_triggers` for a job as its chunks stand now, less the chunks in `skip` (already
    announced by the caller); returns what was emitted."""
    async with sessions() as session:
        triggers = resume_triggers(
            job.context_mode, await chunk_views(session, job.id), chunked=job.chunks_total is not None
        )
    triggers = [(topic, index) for topic, index in triggers if index is None or index not in skip]
    # All at once: one after another, each waits for the broker's acknowledgement, and the last of
    # a dozen chunks would reach its transcriber a dozen round trips after the first.
    await asyncio.gather(
        *(producer.trigger(topic, job.id, producer=stage, chunk_index=index) for topic, index in triggers)
    )
    return triggers


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
